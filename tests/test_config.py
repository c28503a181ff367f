"""Config validation and command-line errors: one line naming the key and the fix."""

import os
import subprocess
import sys

import ml_collections
import pytest

from tests.conftest import REPO, TINY_CONFIG
from vlmjax.config import (
    apply_override,
    config_from_args,
    load_config_file,
    resolve_mesh_shape,
    validate,
)
from vlmjax.errors import ConfigError, DataError


def _validate(config, devices=8, processes=1):
    validate(config, devices, processes)


def test_tiny_and_demo_configs_are_valid(tiny_config):
    _validate(tiny_config)
    demo = config_from_args(os.path.join(REPO, "configs/demo/clip_fashion_mnist.py"), [])
    demo.data.dir = tiny_config.data.dir
    _validate(demo)
    siglip = config_from_args(os.path.join(REPO, "configs/demo/clip_fashion_mnist.py:siglip"), [])
    siglip.data.dir = tiny_config.data.dir
    _validate(siglip)
    assert siglip.objective.name == "siglip" and siglip.model.use_logit_bias


def test_unknown_key_in_file_suggests_the_known_one(tiny_config):
    with tiny_config.unlocked():
        tiny_config.train.batchsize = 64
    with pytest.raises(ConfigError, match=r"config\.train\.batchsize is not a known key; "
                                          r"did you mean config\.train\.batch_size\?"):
        _validate(tiny_config)


def test_unknown_override_is_rejected():
    with pytest.raises(ConfigError, match=r"config\.optimizer\.lrr is not a key.*optimizer\.lr"):
        config_from_args(TINY_CONFIG, ["optimizer.lrr=0.1"])


def test_wrong_types(tiny_config):
    with pytest.raises(ConfigError, match="cannot be parsed as int"):
        apply_override(tiny_config, "train.batch_size", "many")
    with pytest.raises(ConfigError, match="is not a boolean"):
        apply_override(tiny_config, "data.flip", "maybe")
    apply_override(tiny_config, "optimizer.lr", "1")  # an int where a float is expected is fine
    assert tiny_config.optimizer.lr == 1.0 and isinstance(tiny_config.optimizer.lr, float)
    raw = tiny_config.to_dict()
    raw["train"]["num_steps"] = "10"
    with pytest.raises(ConfigError, match=r"config\.train\.num_steps has type str"):
        _validate(ml_collections.ConfigDict(raw))


def test_wrong_type_assigned_in_a_config_file(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text("from vlmjax.config import base_config\n\ndef get_config():\n"
                    "    c = base_config()\n    c.train.num_steps = 'ten'\n    return c\n")
    with pytest.raises(ConfigError, match=r"bad\.py: .*num_steps"):
        config_from_args(str(path), [])


def test_batch_must_divide_over_devices_and_processes(tiny_config):
    tiny_config.train.batch_size = 100
    with pytest.raises(ConfigError, match=r"batch_size=100 does not divide evenly over 8 batch "
                                          r"shards.*batch_size=104"):
        _validate(tiny_config)
    tiny_config.train.batch_size = 96
    _validate(tiny_config)
    with pytest.raises(ConfigError, match="over 5 processes"):
        _validate(tiny_config, devices=8, processes=5)


def test_impossible_values(tiny_config):
    cases = [
        ("model.activation", "relu", "choose one of 'gelu', 'quick_gelu'"),
        ("model.image.pool", "max", "choose one of 'cls', 'gap', 'map'"),
        ("train.num_steps", 0, "it must be positive"),
        ("optimizer.warmup_steps", 100, "is not below train.num_steps"),
        ("model.image.patch_size", 5, "not a multiple of the patch size"),
        ("model.text.heads", 3, "does not divide model.text.width"),
        ("objective.name", "triplet", "objective.name='triplet' is not registered"),
        ("tokenizer.kind", "morfessor", "choose one of 'clip_bpe'"),
        ("train.locked_tower", "audio", "choose one of"),
        ("tokenizer.kind", "sentencepiece", r"config\.tokenizer\.path \(''\) does not exist"),
    ]
    for key, value, message in cases:
        config = load_config_file(TINY_CONFIG)
        config.data.dir = tiny_config.data.dir
        section, _, leaf = key.rpartition(".")
        node = config
        for part in section.split("."):
            node = node[part]
        node[leaf] = value
        with pytest.raises(ConfigError, match=message):
            _validate(config)


def test_siglip_requires_a_bias(tiny_config):
    tiny_config.objective.name = "siglip"
    with pytest.raises(ConfigError, match="use_logit_bias=true"):
        _validate(tiny_config)


def test_missing_dataset_names_the_key_and_the_fix(tiny_config, tmp_path):
    tiny_config.data.dir = str(tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"config\.data\.dir=.*apt-get install dataset-fashion-mnist"):
        _validate(tiny_config)


@pytest.mark.parametrize("overrides,message", [
    ({"image_size": 56}, r"model\.image\.image_size=56; set --config\.model\.image\.image_size=28, "),
    ({"channels": 3}, r"model\.image\.channels=3; set --config\.model\.image\.channels=1, "),
    ({"image_size": 56, "channels": 3},
     r"image_size=56 and model\.image\.channels=3; set --config\.model\.image\.image_size=28 "
     r"--config\.model\.image\.channels=1, "),
])
def test_model_image_unlike_the_data_images_is_named_before_training(tiny_config, overrides,
                                                                      message):
    # Without the check training compiles, then fails deep in JAX (a patch embedding of the
    # wrong shape); the IDX images are not resized, so the model must take 28x28 grayscale.
    from vlmjax.config import validate
    tiny_config.model.image.update(overrides)
    evals = tiny_config.evals
    tiny_config.evals = ml_collections.ConfigDict()  # evaluating the model on other data is fine
    validate(tiny_config, 8, training=False)
    tiny_config.evals = evals  # but not on Fashion-MNIST's own, unresized images
    with pytest.raises(ConfigError, match=r"evals\.zeroshot\.dataset='fashion_mnist' cannot be "
                                          r"evaluated"):
        validate(tiny_config, 8, training=False)
    with pytest.raises(ConfigError, match=r"^the fashion_mnist images in .* are 28x28 with 1 "
                                          r"channel\(s\) \(they are not resized\), but model"):
        validate(tiny_config, 8)
    with pytest.raises(ConfigError, match=message):
        validate(tiny_config, 8)


# Every config file that takes an argument, with its valid arguments ("" is none).
CONFIG_ARGS = {
    "configs/demo/clip_fashion_mnist.py": ("", "clip", "siglip"),
    "configs/demo/coca_fashion_mnist.py": ("", "paper", "open_clip"),
    "configs/demo/filip_fashion_mnist.py": ("", "per_direction"),
    "configs/test/tiny_clip.py": ("", "clip", "siglip"),
    "configs/test/tiny_coca.py": ("", "paper", "open_clip"),
    "configs/test/tiny_filip.py": ("", "per_direction"),
    "configs/demo/clip_resnet_fashion_mnist.py": ("", "clip", "siglip"),
    "configs/test/tiny_resnet.py": ("", "clip", "siglip", "bert"),
    "configs/coca_base.py": ("", "paper", "open_clip"),
}


@pytest.mark.parametrize("path,valid", CONFIG_ARGS.items())
def test_config_arguments_are_checked(path, valid):
    path = os.path.join(REPO, path)
    for arg in valid:
        load_config_file(f"{path}:{arg}" if arg else path)
    for typo in ("sigilp", "open-clip", "per-direction", "CLIP"):
        with pytest.raises(ConfigError, match=rf"^{path}: unknown argument '{typo}'; ") as error:
            load_config_file(f"{path}:{typo}")
        assert all(f" {arg} " in str(error.value) for arg in valid if arg)


def test_config_argument_selects_what_it_names():
    demo = os.path.join(REPO, "configs/demo")
    assert load_config_file(f"{demo}/clip_fashion_mnist.py:siglip").objective.name == "siglip"
    assert load_config_file(f"{demo}/coca_fashion_mnist.py:open_clip").model.coca.pooler == "open_clip"
    assert load_config_file(f"{demo}/filip_fashion_mnist.py:per_direction"
                            ).model.filip.temperature_per_direction


def test_config_argument_typo_on_the_command_line_is_one_line(tmp_path):
    result = _run_cli(["vlmjax.train", "--config", "configs/demo/clip_fashion_mnist.py:sigilp",
                       "--workdir", str(tmp_path / "w")])
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {REPO}/configs/demo/clip_fashion_mnist.py: unknown argument 'sigilp'; choose "
        "clip or siglip (path.py:siglip)")
    assert "Traceback" not in result.stderr and not (tmp_path / "w").exists()


def test_mesh_resolution():
    assert resolve_mesh_shape({"data": -1, "fsdp": 2, "tensor": 1}, 8) == {
        "data": 4, "fsdp": 2, "tensor": 1}
    with pytest.raises(ConfigError, match="multiply to 4 but there are 8 devices"):
        resolve_mesh_shape({"data": 2, "fsdp": 2, "tensor": 1}, 8)
    with pytest.raises(ConfigError, match="at most one axis"):
        resolve_mesh_shape({"data": -1, "fsdp": -1, "tensor": 1}, 8)


def _run_cli(args, cwd=REPO):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("args,message", [
    (["--config.train.batch_size=100"], "does not divide evenly"),
    (["--config.train.batchsize=64"], "did you mean --config.train.batch_size"),
    (["--config.data.dir=/nonexistent"], "apt-get install dataset-fashion-mnist"),
    (["--config.model.image.image_size=56"], "set --config.model.image.image_size=28"),
])
def test_train_cli_errors_are_one_line(args, message, tmp_path, synthetic_data_dir):
    result = _run_cli(["vlmjax.train", "--config", TINY_CONFIG, "--workdir", str(tmp_path / "w"),
                       f"--config.data.dir={synthetic_data_dir}", *args])
    assert result.returncode == 2, result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and message in error_lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_evaluate_without_checkpoint_is_one_line(tmp_path, synthetic_data_dir):
    result = _run_cli(["vlmjax.evaluate", "--config", TINY_CONFIG, "--workdir", str(tmp_path),
                       f"--config.data.dir={synthetic_data_dir}"])
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "no checkpoint in" in result.stderr and "vlmjax.train" in result.stderr


def test_saved_config_of_an_older_version_gets_defaults_for_newer_keys(tmp_path, tiny_config):
    import json

    from vlmjax.train.workdir import load_saved_config
    old = tiny_config.to_dict()
    del old["model"]["image"]["mask_ratio"], old["train"]["grad_accum_steps"]
    (tmp_path / "config.json").write_text(json.dumps(old))
    loaded = load_saved_config(str(tmp_path))
    assert loaded.model.image.mask_ratio == 0.0
    assert loaded.train.grad_accum_steps == 1 and loaded.train.batch_size == tiny_config.train.batch_size
    validate(loaded, 8)
