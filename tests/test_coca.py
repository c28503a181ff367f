"""CoCa: decoder causality, CLS pooling under padding, pooler layouts, the coca objective,
scan/remat equivalence, a short end-to-end run and the full-size Base shapes."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.conftest import REPO
from tests.tolerances import accuracy_slack, dot_atol
from vlmjax.config import load_config_file, select
from vlmjax.config.validate import validate
from vlmjax.errors import ConfigError
from vlmjax.models import stacked
from vlmjax.models.coca import CoCa
from vlmjax.objectives.coca import caption_loss
from vlmjax.objectives.registry import get_objective

TINY_COCA = os.path.join(REPO, "configs", "test", "tiny_coca.py")
VOCAB, CONTEXT = 50, 10


def _model_cfg(pooler: str = "paper", **overrides) -> dict:
    cfg = load_config_file(f"{TINY_COCA}:{pooler}").model.to_dict()
    cfg.update(overrides)
    return cfg


@pytest.fixture(scope="module")
def model() -> CoCa:
    return CoCa(_model_cfg(), VOCAB, CONTEXT, rngs=nnx.Rngs(0))


def _inputs(b: int = 3, length: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = jnp.asarray(rng.normal(size=(b, 28, 28, 1)), jnp.float32)
    ids = rng.integers(1, VOCAB, size=(b, length)).astype(np.int32)
    lengths = np.array([2, length, 5][:b])
    mask = np.arange(length)[None] < lengths[:, None]
    return images, ids, mask, rng


def test_outputs_and_decoder_causality(model):
    images, ids, mask, _ = _inputs()
    out = model({"image": images, "text": jnp.asarray(ids), "text_mask": jnp.asarray(mask)})
    assert out["caption_logits"].shape == (3, 8, VOCAB)
    assert out["caption_logits"].dtype == jnp.float32
    for key in ("image_embed", "text_embed"):
        np.testing.assert_allclose(np.linalg.norm(out[key], axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(float(out["logit_scale"]), 1 / 0.07, rtol=1e-5)
    changed = ids.copy()
    changed[:, 5:] = (changed[:, 5:] + 7) % VOCAB
    full = np.ones_like(mask)
    caption = model.image_features(images)[1]
    a = model.decode(caption, jnp.asarray(ids), jnp.asarray(full))
    b = model.decode(caption, jnp.asarray(changed), jnp.asarray(full))
    np.testing.assert_allclose(a[:, :5], b[:, :5], atol=1e-5)  # the past never sees the future
    assert not np.allclose(a[:, 5:], b[:, 5:], atol=1e-4)
    # `decode` (no CLS) gives the training forward's logits at every real position: the appended
    # CLS is invisible to causal queries (padding positions differ: there padding keys are masked).
    decoded = model.decode(caption, jnp.asarray(ids), jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(decoded)[mask], np.asarray(out["caption_logits"])[mask],
                               atol=1e-5)


def test_cls_embedding_ignores_padding_and_sees_every_real_token(model):
    _, ids, mask, rng = _inputs()
    base = model.encode_text(jnp.asarray(ids), jnp.asarray(mask))
    other_pad = np.where(mask, ids, rng.integers(0, VOCAB, size=ids.shape)).astype(np.int32)
    np.testing.assert_allclose(model.encode_text(jnp.asarray(other_pad), jnp.asarray(mask)), base,
                               atol=1e-5)
    longer = np.concatenate([ids, np.zeros((3, 2), np.int32)], axis=1)  # two more pads: L = 10
    longer_mask = np.concatenate([mask, np.zeros((3, 2), bool)], axis=1)
    np.testing.assert_allclose(model.encode_text(jnp.asarray(longer), jnp.asarray(longer_mask)),
                               base, atol=1e-5)
    last = mask.sum(1) - 1
    changed = ids.copy()
    changed[np.arange(3), last] = (changed[np.arange(3), last] + 1) % VOCAB
    moved = model.encode_text(jnp.asarray(changed), jnp.asarray(mask))
    assert np.all(np.abs(np.asarray(moved) - np.asarray(base)).max(axis=1) > 1e-4)


def _numpy_caption_loss(logits, ids, mask, smoothing=0.0):
    x = logits[:, :-1].astype(np.float64)
    logp = x - x.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    targets, valid = ids[:, 1:], mask[:, 1:]
    nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    nll = (1 - smoothing) * nll - smoothing * logp.mean(-1)
    return float((nll * valid).sum() / valid.sum())


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_caption_loss_matches_numpy_with_padding(smoothing):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4, 6, 11)).astype(np.float32) * 3
    ids = rng.integers(0, 11, size=(4, 6)).astype(np.int32)
    mask = np.arange(6)[None] < np.array([[1], [6], [3], [2]])  # row 0: a lone token, no target
    got = caption_loss(jnp.asarray(logits), jnp.asarray(ids), jnp.asarray(mask), smoothing)
    np.testing.assert_allclose(float(got), _numpy_caption_loss(logits, ids, mask, smoothing),
                               rtol=1e-5)


@pytest.mark.parametrize("implementation", ["dense", "chunked"])
def test_coca_objective_weights_and_contrastive_term(implementation):
    rng = np.random.default_rng(2)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    outputs = {"image_embed": jnp.asarray(unit(rng.normal(size=(8, 6))), jnp.float32),
               "text_embed": jnp.asarray(unit(rng.normal(size=(8, 6))), jnp.float32),
               "logit_scale": jnp.float32(10.0),
               "caption_logits": jnp.asarray(rng.normal(size=(8, 5, 7)), jnp.float32)}
    batch = {"text": jnp.asarray(rng.integers(0, 7, size=(8, 5)), jnp.int32),
             "text_mask": jnp.asarray(np.arange(5)[None] < rng.integers(1, 6, size=(8, 1)))}
    options = {"implementation": implementation, "chunk_size": 4}
    loss, metrics = get_objective("coca").loss(outputs, options, batch)
    clip, clip_metrics = get_objective("clip").loss(outputs, {"implementation": "dense"})
    np.testing.assert_allclose(float(metrics["contrastive_loss"]), float(clip), rtol=1e-5)
    want_caption = _numpy_caption_loss(np.asarray(outputs["caption_logits"]),
                                       np.asarray(batch["text"]), np.asarray(batch["text_mask"]))
    np.testing.assert_allclose(float(metrics["caption_loss"]), want_caption, rtol=1e-5)
    np.testing.assert_allclose(float(loss), float(clip) + 2.0 * want_caption, rtol=1e-5)
    # Chunked is another computation: accuracies agree up to rows rounding can reorder.
    cosines = np.asarray(outputs["image_embed"], np.float64) @ np.asarray(outputs["text_embed"], np.float64).T
    for key, scores in (("i2t_accuracy", cosines), ("t2i_accuracy", cosines.T)):
        slack = accuracy_slack(scores, dot_atol(6 + 1))
        assert abs(float(metrics[key]) - float(clip_metrics[key])) <= slack + 1e-6, key
    assert set(metrics) == {"loss", "contrastive_loss", "caption_loss", "logit_scale",
                            "i2t_accuracy", "t2i_accuracy"}


def test_pooler_layouts_parameter_shapes():
    paper = nnx.to_pure_dict(nnx.state(CoCa(_model_cfg("paper"), VOCAB, CONTEXT, rngs=nnx.Rngs(0))))
    open_clip = CoCa(_model_cfg("open_clip"), VOCAB, CONTEXT, rngs=nnx.Rngs(0))
    head = nnx.to_pure_dict(nnx.state(open_clip))["image_head"]
    # open_clip: one 4-query pooler at the text width on the raw ViT tokens, ln on its outputs.
    assert set(head) == {"pool", "ln_post", "proj"}
    assert head["pool"]["probe"].shape == (4, 16) and head["proj"].shape == (16, 16)
    assert head["pool"]["attn"]["key"].shape == (16, 2, 8)  # ViT width -> pooler heads
    assert set(paper["image_head"]) == {"ln_tokens", "caption_pool", "contrastive_pool", "proj"}
    assert paper["image_head"]["caption_pool"]["probe"].shape == (4, 16)
    assert paper["image_head"]["contrastive_pool"]["probe"].shape == (1, 16)
    # The ViT trunk carries no unused two-tower head.
    assert not {"proj", "ln_post", "map_head", "cls_token"} & set(paper["image"])
    images, _, _, _ = _inputs(2)
    embed, caption = open_clip.image_features(images)
    assert embed.shape == (2, 16) and caption.shape == (2, 3, 16)  # queries 1.. feed the decoder


def test_scan_and_remat_match_unrolled(model):
    scanned = CoCa(_model_cfg(scan_layers=True, remat="full"), VOCAB, CONTEXT, rngs=nnx.Rngs(0))
    graphdef, _ = nnx.split(scanned)
    params = stacked.stack_layer_params(nnx.to_pure_dict(nnx.state(model)))
    abstract = nnx.to_pure_dict(nnx.state(scanned))
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, abstract)
    state = nnx.state(scanned)
    nnx.replace_by_pure_dict(state, params)
    same = nnx.merge(graphdef, state)
    images, ids, mask, _ = _inputs()
    batch = {"image": images, "text": jnp.asarray(ids), "text_mask": jnp.asarray(mask)}
    want, got = model(batch), same(batch)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], atol=1e-5, rtol=1e-5)


def test_config_checks(synthetic_data_dir):
    config = load_config_file(TINY_COCA)
    config.data.dir = synthetic_data_dir
    validate(config, 8)
    for key, value, message in (("objective.name", "clip", "does not work with model 'coca'"),
                                ("model.image.pool", "map", "unused by CoCa"),
                                ("model.coca.pooler", "perceiver", "choose one of 'paper'"),
                                ("model.coca.pooler_heads", 3, "does not divide model.text.width")):
        bad = load_config_file(TINY_COCA)
        bad.data.dir = synthetic_data_dir
        if key == "objective.name":
            select(bad, key, value)  # swaps the objective's own options too
            with pytest.raises(ConfigError, match=message):
                validate(bad, 8)
            continue
        section, name = key.rsplit(".", 1)
        node = bad
        for part in section.split("."):
            node = node[part]
        node[name] = value
        with pytest.raises(ConfigError, match=message):
            validate(bad, 8)


def test_short_training_run_logs_both_terms(tmp_path, synthetic_data_dir):
    from vlmjax.train.loop import train
    config = load_config_file(TINY_COCA)
    config.data.dir = synthetic_data_dir
    config.train.num_steps = 12
    config.train.log_every = 3
    config.train.checkpoint_every = 12
    results = train(config, str(tmp_path))
    with open(os.path.join(tmp_path, "metrics.jsonl")) as f:
        rows = [r for r in map(json.loads, f) if "loss" in r]
    assert [r["step"] for r in rows] == [3, 6, 9, 12]
    assert rows[-1]["loss"] < rows[0]["loss"]
    for row in rows:
        np.testing.assert_allclose(row["loss"], row["contrastive_loss"] + 2 * row["caption_loss"],
                                   rtol=1e-4)
    assert np.isfinite(results["evals"]["zeroshot/fashion_mnist"]["acc1"])


def test_base_config_full_size_shapes():
    """CoCa-Base: 388.76M parameters. The paper's 383M is ViT-B/16 (86M) + text decoder (297M);
    ours has the same ViT (85.8M) and decoder (297.4M) plus the attentional poolers and the
    projection (5.5M), which the paper's count leaves out."""
    config = load_config_file(os.path.join(REPO, "configs", "coca_base.py")).to_dict()
    config["model"]["scan_layers"] = True  # one traced block per stack: seconds, not minutes
    abstract = nnx.eval_shape(lambda: CoCa(config["model"], 64_000, 64, rngs=nnx.Rngs(0)))
    params = nnx.to_pure_dict(nnx.state(abstract))
    count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))  # noqa: E731
    parts = {k: count(v) for k, v in params.items()}
    print(f"CoCa-Base parameters: {count(params):,} {parts}")
    assert parts["image"] == 85_795_584
    assert parts["text"] + parts["text_proj"] + parts["decoder"] == 297_441_024
    assert count(params) == 388_756_225
    assert params["decoder"]["block"]["cross_attn"]["query"].shape == (12, 768, 12, 64)
    assert params["decoder"]["head"].shape == (768, 64_000)
    assert params["image_head"]["caption_pool"]["probe"].shape == (256, 768)
