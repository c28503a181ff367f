"""Config sections owned by components: every default overridable, components swapped by their
selector, each component's own check reached through the validator."""

import tarfile

import ml_collections
import pytest

from vlmjax.config import apply_override, base_config, config_from_args, select, validate
from vlmjax.config.schema import schema_of
from vlmjax.errors import ConfigError, VlmjaxError
from vlmjax.models.towers import IMAGE_TOWERS
from vlmjax.objectives.registry import OBJECTIVES

from .conftest import TINY_CONFIG


def test_every_component_default_is_overridable_from_the_command_line():
    # The README's examples: keys the config file never wrote.
    config = config_from_args(TINY_CONFIG, ["objective.implementation=chunked",
                                            "evals.zeroshot.split_file=/tmp/split_zhou_X.json",
                                            "model.image.mask_ratio=0.5"])
    assert config.objective.implementation == "chunked"
    assert config.evals.zeroshot.split_file == "/tmp/split_zhou_X.json"
    assert config.model.image.mask_ratio == 0.5
    with pytest.raises(ConfigError, match=r"objective\.implementaton.*did you mean "
                                          r"--config\.objective\.implementation"):
        config_from_args(TINY_CONFIG, ["objective.implementaton=chunked"])


def test_an_evaluator_can_be_added_from_the_command_line():
    config = config_from_args(TINY_CONFIG, ["evals.probe.kind=linear_probe",
                                            "evals.probe.num_images=64"])
    assert config.evals.probe.num_images == 64
    assert config.evals.probe.val_fraction == 0.2  # the evaluator's own default, filled in


def test_switching_a_component_swaps_its_untouched_keys():
    config = base_config()
    apply_override(config, "model.name", "coca")
    assert "coca" in config.model and config.model.coca.pooler == "paper"
    apply_override(config, "model.name", "filip")
    assert "coca" not in config.model and "filip" in config.model
    assert config.model.filip.temperature_per_direction is False
    c = base_config(model="coca", objective="coca")
    assert set(c.objective) == set(OBJECTIVES["coca"].options) | {"name"}


def test_switching_drops_the_old_components_keys_and_keeps_typos(tiny_config, caplog):
    select(tiny_config, "model.name", "filip")
    tiny_config.model.filip.temperature_per_direction = True
    with caplog.at_level("INFO"):
        select(tiny_config, "model.name", "two_tower")
    assert "filip" not in tiny_config.model  # it could not take effect on a two-tower model
    assert "config.model.filip={'temperature_per_direction': True} dropped" in caplog.text
    select(tiny_config, "data.name", "image_text")
    assert "num_threads" not in tiny_config.data and "web" in tiny_config.data
    with tiny_config.model.unlocked():
        tiny_config.model.embeddim = 8  # known to no component: validation names it
    select(tiny_config, "model.name", "filip")
    with pytest.raises(ConfigError, match=r"config\.model\.embeddim is not a known key; did you "
                                          r"mean config\.model\.embed_dim"):
        validate(tiny_config, 8)


def test_the_schema_comes_from_the_registries():
    schema = schema_of(base_config().to_dict())
    assert set(schema["model"]["image"]) - {"kind", "image_size", "channels", "proj"} == set(
        IMAGE_TOWERS["vit"].options)
    with pytest.raises(ConfigError, match=r"config\.model\.image\.kind='resnet9' is not registered"):
        schema_of({**base_config().to_dict(), "model": {"name": "two_tower",
                                                        "image": {"kind": "resnet9"}}})


@pytest.mark.parametrize(("key", "value", "message"), [
    ("model.image.mask_ratio", 1.0, r"model\.image\.mask_ratio is 1\.0"),
    ("model.text.pool", "mean", r"model\.text\.pool is 'mean'"),
    ("model.coca.pooler_heads", 3, r"model\.coca\.pooler_heads \(3\) does not divide"),
    ("evals.zeroshot.every", -2, r"evals\.zeroshot\.every is -2"),
    ("tokenizer.kind", "morfessor", r"config\.tokenizer\.kind='morfessor' is not registered"),
    ("data.name", "imagenet", r"config\.data\.name='imagenet' is not registered"),
])
def test_component_checks_are_reached_through_the_validator(tiny_config, key, value, message):
    if key.startswith("model.coca"):
        select(tiny_config, "model.name", "coca")
        select(tiny_config, "objective.name", "coca")
        tiny_config.model.image.pool = "gap"
        tiny_config.model.text.pool = "cls"
    *path, last = key.split(".")
    node = tiny_config
    for part in path:
        node = node[part]
    with node.unlocked():
        node[last] = value
    with pytest.raises(ConfigError, match=message):
        validate(tiny_config, 8)


def test_capabilities_decide_which_evaluators_a_model_can_run(tiny_config):
    tiny_config.evals.captions = ml_collections.ConfigDict({"kind": "captioning", "batch_size": 8})
    with pytest.raises(ConfigError, match=r"evals\.captions\.kind.*captions.*model\.name='two_tower'"):
        validate(tiny_config, 8)


def test_web_data_missing_shards_is_a_checked_option(tiny_config, tmp_path):
    select(tiny_config, "data.name", "image_text")
    tiny_config.tokenizer.kind = "clip_bpe"
    tiny_config.data.web.sources = (f"tar:{tmp_path}/shard-{{00000..00002}}.tar",)
    tiny_config.data.web.missing_shards = "ignore"
    with pytest.raises(ConfigError, match=r"config\.data\.web\.missing_shards is 'ignore'"):
        validate(tiny_config, 8)
    tarfile.open(tmp_path / "shard-00001.tar", "w").close()  # 1 of the range's 3 shards
    tiny_config.data.web.missing_shards = "error"
    with pytest.raises(VlmjaxError, match=r"2 of the 3 tar shards .* are missing \(shard-00000\.tar"):
        validate(tiny_config, 8)
    tiny_config.data.web.missing_shards = "count"  # trains on the others, counting the missing
    validate(tiny_config, 8)
