"""CLIP and SigLIP losses against independent NumPy formulas, on one device and sharded."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from vlmjax.objectives.registry import get_objective


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    m = x.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def numpy_clip_loss(img: np.ndarray, txt: np.ndarray, scale: float) -> float:
    logits = scale * img.astype(np.float64) @ txt.astype(np.float64).T
    diag = np.diag(logits)
    rows = np.mean(_logsumexp(logits, 1) - diag)
    cols = np.mean(_logsumexp(logits, 0) - diag)
    return float((rows + cols) / 2)


def numpy_siglip_loss(img: np.ndarray, txt: np.ndarray, scale: float, bias: float) -> float:
    logits = scale * img.astype(np.float64) @ txt.astype(np.float64).T + bias
    z = 2 * np.eye(len(img)) - 1
    log_sigmoid = -np.logaddexp(0, -z * logits)
    return float(-log_sigmoid.sum() / len(img))


def _outputs(img, txt, scale, bias=None):
    out = {"image_embed": jnp.asarray(img, jnp.float32), "text_embed": jnp.asarray(txt, jnp.float32),
           "logit_scale": jnp.float32(scale)}
    if bias is not None:
        out["logit_bias"] = jnp.float32(bias)
    return out


@pytest.mark.parametrize("scale", [1.0, 14.3, 100.0])
def test_clip_matches_numpy(scale):
    rng = np.random.default_rng(0)
    img, txt = _unit(rng, 24, 16), _unit(rng, 24, 16)
    loss, metrics = get_objective("clip").loss(_outputs(img, txt, scale), {})
    np.testing.assert_allclose(float(loss), numpy_clip_loss(img, txt, scale), rtol=1e-5)
    assert float(metrics["loss"]) == float(loss)


def test_clip_hand_computed_two_pairs():
    # img = txt = identity, s = 1: logits [[1, 0], [0, 1]]; each CE = log(1 + e^-1).
    eye = np.eye(2)
    loss, metrics = get_objective("clip").loss(_outputs(eye, eye, 1.0), {})
    np.testing.assert_allclose(float(loss), np.log1p(np.exp(-1.0)), rtol=1e-6)
    assert float(metrics["i2t_accuracy"]) == 1.0


def test_clip_with_duplicate_captions():
    # Duplicated captions are still negatives of each other's images (the standard loss).
    rng = np.random.default_rng(1)
    img = _unit(rng, 16, 8)
    txt = _unit(rng, 16, 8)
    txt[8:] = txt[:8]
    loss, _ = get_objective("clip").loss(_outputs(img, txt, 50.0), {})
    np.testing.assert_allclose(float(loss), numpy_clip_loss(img, txt, 50.0), rtol=1e-5)
    # With identical captions, the paired text->image rows cannot beat log(2) on average.
    loss_all_same, _ = get_objective("clip").loss(_outputs(img, np.repeat(txt[:1], 16, 0), 1.0), {})
    np.testing.assert_allclose(float(loss_all_same), numpy_clip_loss(img, np.repeat(txt[:1], 16, 0), 1.0),
                               rtol=1e-5)


@pytest.mark.parametrize("scale,bias", [(10.0, -10.0), (1.0, 0.0), (300.0, -5.0)])
def test_siglip_matches_numpy(scale, bias):
    rng = np.random.default_rng(2)
    img, txt = _unit(rng, 20, 16), _unit(rng, 20, 16)
    loss, _ = get_objective("siglip").loss(_outputs(img, txt, scale, bias), {})
    np.testing.assert_allclose(float(loss), numpy_siglip_loss(img, txt, scale, bias), rtol=1e-5)


@pytest.mark.parametrize("name", ["clip", "siglip"])
@pytest.mark.parametrize("log_scale", [-8.0, 0.0, np.log(100.0), 12.0])
def test_extreme_temperatures_give_finite_values_and_gradients(name, log_scale):
    rng = np.random.default_rng(3)
    img, txt = _unit(rng, 16, 8), _unit(rng, 16, 8)
    txt[4] = img[4]  # a perfect match makes the logits as extreme as they get

    def loss_fn(img, txt, t, b):
        out = {"image_embed": img, "text_embed": txt, "logit_scale": jnp.exp(t), "logit_bias": b}
        return get_objective(name).loss(out, {})[0]

    args = (jnp.asarray(img, jnp.float32), jnp.asarray(txt, jnp.float32),
            jnp.float32(log_scale), jnp.float32(-10.0))
    value, grads = jax.value_and_grad(loss_fn, argnums=(0, 1, 2, 3))(*args)
    assert np.isfinite(float(value))
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g)))


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_sharded_global_batch_equals_single_device(name):
    """Embeddings split over 8 devices give the loss of the concatenated batch."""
    assert jax.device_count() == 8
    rng = np.random.default_rng(4)
    img, txt = _unit(rng, 64, 16), _unit(rng, 64, 16)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharded = NamedSharding(mesh, PartitionSpec("data"))
    out = _outputs(img, txt, 20.0, -3.0)
    out["image_embed"] = jax.device_put(out["image_embed"], sharded)
    out["text_embed"] = jax.device_put(out["text_embed"], sharded)
    loss = jax.jit(lambda o: get_objective(name).loss(o, {})[0])(out)
    reference = (numpy_clip_loss(img, txt, 20.0) if name == "clip"
                 else numpy_siglip_loss(img, txt, 20.0, -3.0))
    np.testing.assert_allclose(float(loss), reference, rtol=1e-5)
