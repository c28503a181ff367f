"""The patch-to-phrase objective against NumPy (pooling, positives with duplicates, both
directions of the multiple-instance contrast), the patch_phrase model's outputs, and a tiny run
on scenes that trains and evaluates dense."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.conftest import REPO
from vlmjax.models.embedding import l2_normalize
from vlmjax.objectives import patch_phrase as objective
from vlmjax.objectives.contrastive import clip_loss

TINY = os.path.join(REPO, "configs", "test", "tiny_dense.py")


def _softmax_ce(logits: np.ndarray, targets: np.ndarray) -> float:
    """Cross-entropy of softmax(logits) against targets spread evenly over their True entries."""
    logp = logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
    return -float(np.sum(logp[targets]) / targets.sum())


@pytest.mark.parametrize("pool", objective.POOLS)
def test_pooled_scores_match_numpy(pool):
    rng = np.random.default_rng(0)
    patches = l2_normalize(jnp.asarray(rng.normal(size=(3, 5, 4))))
    phrases = l2_normalize(jnp.asarray(rng.normal(size=(6, 4))))
    got = objective.pooled_scores(patches, phrases, pool, temperature=0.2)
    sims = np.einsum("bne,pe->bpn", np.asarray(patches, np.float64), np.asarray(phrases, np.float64))
    if pool == "max":
        want = sims.max(-1)
    elif pool == "mean":
        want = sims.mean(-1)
    else:
        w = np.exp(sims / 0.2)
        want = (w / w.sum(-1, keepdims=True) * sims).sum(-1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_positives_are_own_phrases_and_identical_duplicates():
    # 3 images x 2 phrase slots; image 2's second slot is empty; image 1 repeats image 0's
    # first phrase (same tokens).
    ids = np.array([[[5, 6], [7, 0]], [[5, 6], [8, 9]], [[4, 0], [0, 0]]])
    valid = np.array([[True, True], [True, True], [True, False]])
    got = np.asarray(objective.phrase_positives(jnp.asarray(ids), jnp.asarray(valid)))
    want = np.array([[1, 1, 1, 0, 0, 0],
                     [1, 0, 1, 1, 0, 0],
                     [0, 0, 0, 0, 1, 0]], bool)
    np.testing.assert_array_equal(got, want)
    own = np.asarray(objective.phrase_positives(jnp.asarray(ids), jnp.asarray(valid), False))
    np.testing.assert_array_equal(own, [[1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0],
                                        [0, 0, 0, 0, 1, 0]])


def test_local_loss_is_both_directions_of_a_soft_cross_entropy():
    rng = np.random.default_rng(1)
    ids = np.array([[[5, 6], [7, 0]], [[5, 6], [8, 9]], [[4, 0], [0, 0]]])
    valid = np.array([[True, True], [True, True], [True, False]])
    positives = np.asarray(objective.phrase_positives(jnp.asarray(ids), jnp.asarray(valid)))
    scores = rng.normal(size=(3, 6)) * 3
    loss, metrics = objective.local_loss(jnp.asarray(scores), jnp.asarray(positives),
                                         jnp.asarray(valid))
    flat_valid = valid.reshape(-1)
    p2i = np.mean([_softmax_ce(scores[:, q], positives[:, q]) for q in range(6) if flat_valid[q]])
    i2p = np.mean([_softmax_ce(scores[i, flat_valid], positives[i, flat_valid]) for i in range(3)])
    assert float(loss) == pytest.approx((p2i + i2p) / 2, rel=1e-5)
    best = scores.argmax(axis=0)
    accuracy = np.mean([positives[best[q], q] for q in range(6) if flat_valid[q]])
    assert float(metrics["phrase_to_image_accuracy"]) == pytest.approx(accuracy)
    grads = jax.grad(lambda s: objective.local_loss(s, jnp.asarray(positives),
                                                    jnp.asarray(valid))[0])(jnp.asarray(scores))
    assert np.all(np.isfinite(grads)) and np.all(np.asarray(grads)[:, ~flat_valid] == 0)


@pytest.mark.parametrize("balanced", [False, True])
def test_local_sigmoid_loss_matches_numpy(balanced):
    ids = np.array([[[5, 6], [7, 0]], [[5, 6], [8, 9]], [[4, 0], [0, 0]]])
    valid = np.array([[True, True], [True, True], [True, False]])
    positives = np.asarray(objective.phrase_positives(jnp.asarray(ids), jnp.asarray(valid)))
    logits = np.random.default_rng(3).normal(size=(3, 6)) * 4 - 1
    loss, metrics = objective.local_sigmoid_loss(jnp.asarray(logits), jnp.asarray(positives),
                                                 jnp.asarray(valid), balanced=balanced)
    flat_valid = valid.reshape(-1)
    per_pair = np.log1p(np.exp(-np.where(positives, 1, -1) * logits))  # -log sigmoid(label z)
    columns = []
    for q in np.flatnonzero(flat_valid):
        pos, neg = per_pair[positives[:, q], q], per_pair[~positives[:, q], q]
        columns.append((pos.mean() + (neg.mean() if len(neg) else 0)) / 2 if balanced
                       else per_pair[:, q].sum())
    assert float(loss) == pytest.approx(np.mean(columns), rel=1e-5)
    correct = ((logits > 0) == positives)[:, flat_valid]
    assert float(metrics["phrase_pair_accuracy"]) == pytest.approx(correct.mean())
    grads = jax.grad(lambda z: objective.local_sigmoid_loss(
        z, jnp.asarray(positives), jnp.asarray(valid), balanced)[0])(jnp.asarray(logits))
    assert np.all(np.asarray(grads)[:, ~flat_valid] == 0)


def test_sigmoid_local_term_adds_the_phrase_bias_and_needs_one():
    from vlmjax.config import config_from_args
    from vlmjax.errors import ConfigError
    rng = np.random.default_rng(4)
    b, k, n, e = 4, 2, 3, 8
    unit = lambda *s: l2_normalize(jnp.asarray(rng.normal(size=s)))  # noqa: E731
    ids = jnp.asarray(rng.integers(1, 9, size=(b, k, 3)))
    valid = jnp.ones((b, k), bool)
    outputs = {"image_embed": unit(b, e), "text_embed": unit(b, e), "patch_embed": unit(b, n, e),
               "phrase_embed": unit(b, k, e), "phrase_valid": valid,
               "logit_scale": jnp.float32(10.0), "phrase_logit_scale": jnp.float32(5.0),
               "phrase_logit_bias": jnp.float32(-2.0)}
    loss, metrics = objective.patch_phrase_loss(outputs, {"local_loss": "sigmoid"},
                                                {"phrases": ids})
    pooled = objective.pooled_scores(outputs["patch_embed"], outputs["phrase_embed"].reshape(
        b * k, e))
    local = objective.local_sigmoid_loss(5.0 * pooled - 2.0, objective.phrase_positives(
        ids, valid), valid)[0]
    assert float(metrics["local_loss"]) == pytest.approx(float(local), rel=1e-6)
    assert float(metrics["phrase_logit_bias"]) == -2.0
    _, both = objective.patch_phrase_loss(outputs, {"local_loss": "softmax_and_sigmoid"},
                                          {"phrases": ids})
    contrast = objective.local_loss(5.0 * pooled, objective.phrase_positives(ids, valid),
                                    valid)[0]
    assert float(both["local_loss"]) == pytest.approx(float(local + contrast), rel=1e-6)
    assert {"phrase_pair_accuracy", "phrase_to_image_accuracy"} <= set(both)
    config = config_from_args(f"{TINY}", ["objective.local_loss=sigmoid"])
    with pytest.raises(ConfigError, match="model.patch_phrase.logit_bias_init"):
        objective.PATCH_PHRASE.check(config.to_dict())


def test_loss_is_the_global_loss_plus_the_weighted_local_term():
    rng = np.random.default_rng(2)
    b, k, n, e = 4, 2, 3, 8
    unit = lambda *s: l2_normalize(jnp.asarray(rng.normal(size=s)))  # noqa: E731
    ids = jnp.asarray(rng.integers(1, 9, size=(b, k, 3)))
    valid = jnp.asarray(rng.random((b, k)) < 0.8).at[:, 0].set(True)
    outputs = {"image_embed": unit(b, e), "text_embed": unit(b, e), "patch_embed": unit(b, n, e),
               "phrase_embed": unit(b, k, e), "phrase_valid": valid,
               "logit_scale": jnp.float32(10.0), "phrase_logit_scale": jnp.float32(5.0)}
    options = {"local_weight": 0.5, "pool": "max"}
    loss, metrics = objective.patch_phrase_loss(outputs, options, {"phrases": ids})
    global_loss = clip_loss(outputs, {})[0]
    pooled = objective.pooled_scores(outputs["patch_embed"], outputs["phrase_embed"].reshape(
        b * k, e), "max")
    local = objective.local_loss(5.0 * pooled, objective.phrase_positives(ids, valid), valid)[0]
    assert float(loss) == pytest.approx(float(global_loss + 0.5 * local), rel=1e-6)
    assert float(metrics["local_loss"]) == pytest.approx(float(local), rel=1e-6)


def test_distinct_phrases_merge_identical_tokens_within_an_image():
    ids = np.array([[[5, 6], [5, 6], [7, 0]], [[5, 6], [8, 9], [0, 0]]])
    valid = np.array([[True, True, True], [True, True, False]])
    got = np.asarray(objective.distinct_phrases(jnp.asarray(ids), jnp.asarray(valid)))
    np.testing.assert_array_equal(got, [[1, 0, 1], [1, 1, 0]])  # across images: both kept


@pytest.mark.parametrize("null", [False, True])
@pytest.mark.parametrize("pool", objective.POOLS)
def test_assignment_loss_matches_numpy(pool, null):
    rng = np.random.default_rng(5)
    b, n, k, e = 3, 5, 3, 4
    patches = np.asarray(l2_normalize(jnp.asarray(rng.normal(size=(b, n, e)))), np.float64)
    phrases = np.asarray(l2_normalize(jnp.asarray(rng.normal(size=(b, k, e)))), np.float64)
    null_embed = np.asarray(l2_normalize(jnp.asarray(rng.normal(size=(e,)))), np.float64)
    keep = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1]], bool)
    loss, metrics = objective.assignment_loss(
        jnp.asarray(patches, jnp.float32), jnp.asarray(phrases, jnp.float32), jnp.asarray(keep),
        jnp.float32(4.0), jnp.asarray(null_embed, jnp.float32) if null else None, pool, 0.2)
    terms, presences = [], []
    for i in range(b):
        columns = [phrases[i, q] for q in np.flatnonzero(keep[i])] + ([null_embed] if null else [])
        logits = 4.0 * patches[i] @ np.stack(columns).T  # [n, columns]
        shares = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        for c in range(len(columns)):
            s = shares[:, c]
            if pool == "max":
                presence = s.max()
            elif pool == "mean":
                presence = s.mean()
            else:
                w = np.exp(s / 0.2)
                presence = np.sum(w / w.sum() * s)
            terms.append(-np.log(presence))
            presences.append(presence)
    assert float(loss) == pytest.approx(np.mean(terms), rel=1e-5)
    assert float(metrics["phrase_presence"]) == pytest.approx(np.mean(presences), rel=1e-5)


def test_assignment_rewards_patches_that_each_hold_one_phrase():
    """Two phrases, two patches: patches that each match their own phrase score lower than
    patches that both hold the sum of the two (a summary the contrast terms cannot tell
    apart from it) at the same pooled cosine per phrase (max pooling)."""
    a, c = np.eye(4)[0], np.eye(4)[1]
    phrases = jnp.asarray(np.stack([a, c])[None], jnp.float32)
    keep = jnp.ones((1, 2), bool)
    local = jnp.asarray(np.stack([a, c])[None], jnp.float32)
    mixed = jnp.asarray(np.stack([a + c, a + c])[None] / np.sqrt(2), jnp.float32)
    separate, _ = objective.assignment_loss(local, phrases, keep, jnp.float32(10.0), pool="max")
    summary, _ = objective.assignment_loss(mixed, phrases, keep, jnp.float32(10.0), pool="max")
    assert float(summary) == pytest.approx(np.log(2), rel=1e-5)  # each phrase owns half a patch
    # -log(1 / (1 + e^-10)): the share of a float32 softmax near 1, to its rounding
    assert float(separate) == pytest.approx(np.log1p(np.exp(-10.0)), abs=1e-6)


def test_loss_adds_the_weighted_assignment_and_null_needs_it():
    from vlmjax.config import config_from_args
    from vlmjax.errors import ConfigError
    rng = np.random.default_rng(6)
    b, k, n, e = 4, 2, 3, 8
    unit = lambda *s: l2_normalize(jnp.asarray(rng.normal(size=s)))  # noqa: E731
    ids = jnp.asarray(rng.integers(1, 9, size=(b, k, 3))).at[0, 1].set(jnp.asarray([1, 2, 3])).at[
        0, 0].set(jnp.asarray([1, 2, 3]))  # image 0 names one phrase twice
    valid = jnp.ones((b, k), bool)
    outputs = {"image_embed": unit(b, e), "text_embed": unit(b, e), "patch_embed": unit(b, n, e),
               "phrase_embed": unit(b, k, e), "phrase_valid": valid, "null_embed": unit(e),
               "logit_scale": jnp.float32(10.0), "phrase_logit_scale": jnp.float32(5.0)}
    plain, _ = objective.patch_phrase_loss(outputs, {}, {"phrases": ids})
    loss, metrics = objective.patch_phrase_loss(outputs, {"assignment_weight": 0.5},
                                                {"phrases": ids})
    keep = np.ones((b, k), bool)
    keep[0, 1] = False
    want, _ = objective.assignment_loss(outputs["patch_embed"], outputs["phrase_embed"],
                                        jnp.asarray(keep), jnp.float32(5.0), outputs["null_embed"])
    assert float(metrics["assignment_loss"]) == pytest.approx(float(want), rel=1e-6)
    assert float(loss) == pytest.approx(float(plain + 0.5 * want), rel=1e-6)
    config = config_from_args(f"{TINY}", ["model.patch_phrase.null_phrase=True"])
    with pytest.raises(ConfigError, match="assignment_weight"):
        objective.PATCH_PHRASE.check(config.to_dict())


def test_model_outputs_patches_and_phrases():
    from vlmjax.config import load_config_file
    from vlmjax.models.patch_phrase import PatchPhrase
    cfg = load_config_file(TINY).to_dict()
    model = PatchPhrase(cfg["model"], vocab_size=50, context_length=24, rngs=nnx.Rngs(0))
    batch = {"image": jnp.zeros((2, 16, 16, 1)), "text": jnp.ones((2, 24), jnp.int32),
             "text_mask": jnp.ones((2, 24), bool), "phrases": jnp.ones((2, 4, 6), jnp.int32),
             "phrase_mask": jnp.zeros((2, 4, 6), bool).at[:, :2, :3].set(True)}
    out = model(batch)
    assert out["patch_embed"].shape == (2, 4, 16) and out["phrase_embed"].shape == (2, 4, 16)
    np.testing.assert_array_equal(out["phrase_valid"], [[1, 1, 0, 0], [1, 1, 0, 0]])
    np.testing.assert_allclose(out["patch_embed"], model.encode_image_tokens(batch["image"]),
                               rtol=1e-6)
    np.testing.assert_allclose(out["phrase_embed"][:, 0], model.encode_text(
        batch["phrases"][:, 0], batch["phrase_mask"][:, 0]), rtol=1e-6)
    with pytest.raises(ValueError, match="data.phrases=True"):
        model({k: v for k, v in batch.items() if not k.startswith("phrase")})
    assert "phrase_logit_bias" not in out and not hasattr(model.phrase_logit_bias, "value")
    cfg["model"]["patch_phrase"]["logit_bias_init"] = -3.0
    biased = PatchPhrase(cfg["model"], vocab_size=50, context_length=24, rngs=nnx.Rngs(0))
    assert float(biased(batch)["phrase_logit_bias"]) == -3.0
    cfg["model"]["patch_phrase"]["null_phrase"] = True
    with_null = PatchPhrase(cfg["model"], vocab_size=50, context_length=24, rngs=nnx.Rngs(0))
    null = with_null(batch)["null_embed"]
    assert null.shape == (16,) and float(jnp.linalg.norm(null)) == pytest.approx(1.0, rel=1e-6)
    np.testing.assert_allclose(null, l2_normalize(with_null.null_phrase[...]), rtol=1e-6)
    cfg["model"]["patch_phrase"]["null_phrase"] = False
    from vlmjax.models.dense import dense_embeddings
    cfg["model"]["patch_phrase"]["patch_tokens"] = "maskclip"
    valued = PatchPhrase(cfg["model"], vocab_size=50, context_length=24, rngs=nnx.Rngs(0))
    image = jax.random.normal(jax.random.key(1), (2, 16, 16, 1))
    got = valued({**batch, "image": image})["patch_embed"]
    want = dense_embeddings(valued, image, "maskclip").reshape(2, 4, 16)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert not np.allclose(got, valued.encode_image_tokens(image), atol=1e-3)


def test_a_tiny_run_on_scenes_trains_and_evaluates(synthetic_data_dir, tmp_path):
    """(The scenes iterator's exact resume is tested in test_scenes.)"""
    from vlmjax.config import load_config_file
    from vlmjax.errors import ConfigError
    from vlmjax.train.loop import train
    config = load_config_file(TINY)
    config.data.dir = synthetic_data_dir
    results = train(config, str(tmp_path / "run"))
    dense = results["evals"]["dense_segmentation/fashion_mnist_scenes"]
    assert {f"{m}/miou_fg" for m in ("tokens", "maskclip", "sclip")} <= set(dense)
    assert 0 <= dense["tokens/miou"] <= 1
    assert "crop/acc1" in results["evals"]["region_classification/fashion_mnist_scenes"]
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        losses = [json.loads(line) for line in f if '"local_loss"' in line]
    assert losses and all(np.isfinite(r["local_loss"]) for r in losses)
    config.data.phrases = False
    with pytest.raises(ConfigError, match="data.phrases"):
        train(config, str(tmp_path / "nophrases"))


@pytest.mark.parametrize("arg", ["patch_phrase", "clip", "siglip", "filip", "patch_phrase:grid"])
def test_the_dense_demo_config_validates(synthetic_data_dir, arg):
    from vlmjax.config import load_config_file
    from vlmjax.config.validate import validate
    config = load_config_file(os.path.join(REPO, "configs", "demo", "dense_fashion_mnist.py") +
                              f":{arg}")
    config.data.dir = synthetic_data_dir
    validate(config, 8)
    assert config.data.phrases == arg.startswith("patch_phrase")


def test_the_dense_suite_adds_the_model_background_on_request():
    from vlmjax.config import load_config_file
    from vlmjax.errors import ConfigError
    suite = os.path.join(REPO, "configs", "eval", "dense_scenes.py")
    plain = load_config_file(f"{suite}:fashion_mnist_scenes_grid")
    own = load_config_file(f"{suite}:fashion_mnist_scenes_grid:model")
    assert set(own.evals) - set(plain.evals) == {"dense_model"}
    assert own.evals.dense_model.background == "model"
    assert own.evals.dense_model.dataset == "fashion_mnist_scenes_grid"
    with pytest.raises(ConfigError, match="DATASET:model"):
        load_config_file(f"{suite}:fashion_mnist_scenes_grid:bias")
