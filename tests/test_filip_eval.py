"""FILIP's model and its evaluation: token outputs, temperatures, token-wise zero-shot with the
prompt ensemble, retrieval metrics (hand-computed), and a short run evaluated token-wise."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.conftest import REPO
from tests.test_filip import SIM_ATOL, naive_similarities
from tests.tolerances import gamma
from vlmjax.config import load_config_file, select
from vlmjax.config.validate import validate
from vlmjax.errors import ConfigError
from vlmjax.evaluators.metrics import retrieval_metrics
from vlmjax.evaluators.scoring import EmbeddingScoring, TokenWiseScoring, scoring_for
from vlmjax.models.filip import Filip
from vlmjax.models.registry import FAMILIES

TINY_FILIP = os.path.join(REPO, "configs", "test", "tiny_filip.py")


def _config(arg: str = "", data_dir: str = ""):
    config = load_config_file(f"{TINY_FILIP}:{arg}")
    if data_dir:
        config.data.dir = data_dir
    return config


def test_model_outputs_normalised_tokens_and_two_temperatures():
    cfg = _config("per_direction").model.to_dict()
    model = Filip(cfg, 50, 10, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.normal(size=(3, 28, 28, 1)), jnp.float32)
    ids = jnp.asarray(rng.integers(1, 50, size=(3, 10)), jnp.int32)
    mask = jnp.arange(10)[None] < jnp.asarray([[2], [10], [5]])
    out = model({"image": images, "text": ids, "text_mask": mask})
    assert out["image_tokens"].shape == (3, 4, 16)  # (28 / 14)² patches, joint width 16
    assert out["text_tokens"].shape == (3, 10, 16)
    for key in ("image_tokens", "text_tokens"):
        np.testing.assert_allclose(np.linalg.norm(out[key], axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(out["logit_scale_t2i"], 1 / 0.07, rtol=1e-5)
    # Causal text tower: a real token's embedding does not depend on what follows it.
    later = ids.at[0, 2:].set(7)
    np.testing.assert_allclose(model.encode_text_tokens(later, mask)[0, :2],
                               out["text_tokens"][0, :2], atol=1e-6)
    params = nnx.state(model, nnx.Param).to_pure_dict()
    params["logit_scale_t2i"] = jnp.float32(9.0)
    clamped = FAMILIES["filip"].post_update(params, cfg)
    assert float(clamped["logit_scale_t2i"]) == pytest.approx(np.log(100.0))
    shared = nnx.eval_shape(lambda: Filip(_config().model.to_dict(), 50, 10, rngs=nnx.Rngs(0)))
    assert "logit_scale_t2i" not in nnx.state(shared, nnx.Param)


def test_scoring_is_chosen_by_model_family():
    view = lambda name: FAMILIES[name]  # noqa: E731  (ModelView and ModelFamily declare .scoring)
    assert isinstance(scoring_for(view("filip")), TokenWiseScoring)
    assert scoring_for(view("filip"), "t2i").direction == "t2i"
    assert isinstance(scoring_for(view("two_tower")), EmbeddingScoring)
    assert isinstance(scoring_for(view("coca")), EmbeddingScoring)


@pytest.mark.parametrize("direction", ["i2t", "t2i", "mean"])
def test_token_wise_prompt_ensemble_averages_similarities_over_templates(direction):
    rng = np.random.default_rng(1)
    unit = lambda a: (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)  # noqa: E731
    images = unit(rng.normal(size=(6, 4, 8)))
    prompts = unit(rng.normal(size=(3 * 5, 7, 8)))  # 3 classes x 5 templates, class-major
    lengths = rng.integers(1, 8, size=15)
    mask = np.arange(7)[None] < lengths[:, None]
    scoring = TokenWiseScoring(direction=direction, text_chunk=4)  # 15 prompts: a padded chunk
    classifier = scoring.classifier({"tokens": prompts, "mask": mask}, 3)
    got = scoring.class_scores({"tokens": images, "mask": np.ones((6, 4), bool)}, classifier)
    s_image, s_text = naive_similarities(images, np.ones((6, 4), bool), prompts, mask)
    want = {"i2t": s_image, "t2i": s_text, "mean": (s_image + s_text) / 2}[direction]
    # Token-wise similarities, then a mean over 5 templates (and halving for "mean").
    np.testing.assert_allclose(got, want.reshape(6, 3, 5).mean(-1), atol=SIM_ATOL + 2 * gamma(8))


def test_retrieval_metrics_hand_computed_with_ties_and_several_captions():
    image_of_text = np.array([0, 0, 1, 2, 2])
    i2t = np.array([[0.9, 0.1, 0.95, 0.2, 0.3],   # best own text 0.9; text 2 beats it: rank 1
                    [0.5, 0.5, 0.5, 0.1, 0.1],    # own text 2 ties two others: rank 2
                    [0.0, 0.0, 0.0, 0.1, 0.8]])   # rank 0
    t2i = np.array([[0.9, 0.1, 0.4, 0.0, 0.6],
                    [0.2, 0.3, 0.4, 0.0, 0.0],
                    [0.1, 0.3, 0.0, 0.5, 0.5]])   # text ranks: 0, 2, 1 (tie), 0, 1
    positive = image_of_text[None, :] == np.arange(3)[:, None]
    m = retrieval_metrics(i2t, t2i, positive, ks=(1, 2, 3))
    assert m["text_retrieval_recall@1"] == pytest.approx(1 / 3)
    assert m["text_retrieval_recall@2"] == pytest.approx(2 / 3)
    assert m["text_retrieval_recall@3"] == 1.0
    assert m["image_retrieval_recall@1"] == pytest.approx(2 / 5)
    assert m["image_retrieval_recall@2"] == pytest.approx(4 / 5)
    assert m["image_retrieval_recall@3"] == 1.0
    # Class relevance: images 0 and 1 share a class, so texts 0-2 are positives for both.
    classes = np.array([0, 0, 1])
    m = retrieval_metrics(i2t, t2i, classes[:, None] == classes[image_of_text][None, :], ks=(1, 2))
    # text ranks: image 0 best positive 0.95 -> 0; image 1 0.5 -> 0; image 2 0.8 -> 0
    assert m["text_retrieval_recall@1"] == 1.0
    # image ranks: text 0 best 0.9 -> 0; text 1 0.3 ties image 2 -> 1; text 2 0.4 -> 0;
    # text 3 0.5 -> 0; text 4 0.5, image 0 has 0.6 -> 1
    assert m["image_retrieval_recall@1"] == pytest.approx(3 / 5)
    assert m["image_retrieval_recall@2"] == 1.0


def test_config_checks(synthetic_data_dir):
    validate(_config("per_direction", synthetic_data_dir), 8)
    for key, value, message in (
            ("model.image.pool", "map", r"model\.image\.pool='map' is unused by FILIP"),
            ("model.use_logit_bias", True, r"use_logit_bias is not supported by FILIP"),
            ("objective.token_selection", 0.0, r"token_selection=0\.0 must lie in \(0, 1\]"),
            ("objective.selection_group", 5, r"selection_group=5 must be 0 .* divide"),
            ("objective.label_smoothing", 1.0, r"label_smoothing=1\.0 must lie in \[0, 1\)"),
            ("objective.implementation", "flash", r"'flash' is not a contrastive loss implementation"),
            ("evals.zeroshot.token_direction", "up", r"token_direction is 'up'; choose one of"),
            ("evals.retrieval.relevance", "image", r"relevance is 'image'; choose 'pair'")):
        bad = _config("", synthetic_data_dir)
        section, _, leaf = key.rpartition(".")
        node = bad
        for part in section.split("."):
            node = node[part]
        node[leaf] = value
        with pytest.raises(ConfigError, match=message):
            validate(bad, 8)
    clip_model = _config("", synthetic_data_dir)
    select(clip_model, "model.name", "two_tower")
    with pytest.raises(ConfigError, match="'filip' does not work with model 'two_tower'"):
        validate(clip_model, 8)


def test_short_run_evaluates_token_wise(tmp_path, synthetic_data_dir):
    from vlmjax.train.loop import train
    config = _config("per_direction", synthetic_data_dir)
    config.objective.token_selection = 0.5
    config.train.num_steps = 10
    results = train(config, str(tmp_path))
    with open(os.path.join(tmp_path, "metrics.jsonl")) as f:
        rows = [r for r in map(json.loads, f) if "loss" in r]
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert rows[-1]["logit_scale_t2i"] != rows[-1]["logit_scale"]  # two temperatures, trained
    zeroshot = results["evals"]["zeroshot/fashion_mnist"]
    retrieval = results["evals"]["retrieval/fashion_mnist"]
    assert 0.1 < zeroshot["acc1"] <= 1  # above chance on the learnable synthetic classes
    assert set(retrieval) == {f"{d}_retrieval_recall@{k}" for d in ("text", "image")
                              for k in (1, 5, 10)}
    assert all(0 <= v <= 1 for v in retrieval.values())
    assert jax.device_count() == 8  # it all ran on the 8-device mesh
