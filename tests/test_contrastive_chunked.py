"""Chunked and ring contrastive losses equal the dense ones: values, accuracies, gradients, HLO.

The dense objectives are the reference (checked against NumPy in test_objectives.py). Every
comparison includes the gradients w.r.t. both embeddings, the scale and (SigLIP) the bias.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.tolerances import accuracy_slack, dot_atol, unit_roundoff
from vlmjax.config import validate
from vlmjax.config.defaults import DEFAULT_SHARDING_RULES
from vlmjax.errors import ConfigError
from vlmjax.objectives.registry import get_objective
from vlmjax.objectives.tiles import chunk_length
from vlmjax.parallel.logical import axis_rules
from vlmjax.parallel.mesh import batch_sharding, make_mesh, replicated

B, D = 64, 16
SCALE, BIAS = 20.0, -3.0


def _pairs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit image/text embeddings whose pairs correlate, so accuracies are neither 0 nor 1."""
    rng = np.random.default_rng(seed)
    img = rng.normal(size=(B, D))
    txt = img + 1.2 * rng.normal(size=(B, D))
    unit = lambda a: (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)
    return unit(img), unit(txt)


@functools.cache
def _loss_and_grads(name: str, implementation: str, chunk_size: int = 1024):
    """jit of (x, y, scale, bias) -> ((loss, metrics), (dx, dy, dscale, dbias)) for one objective."""
    options = {"implementation": implementation, "chunk_size": chunk_size}

    def loss(x, y, scale, bias):
        outputs = {"image_embed": x, "text_embed": y, "logit_scale": scale, "logit_bias": bias}
        return get_objective(name).loss(outputs, options)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))


def _accuracy_slack(x: np.ndarray, y: np.ndarray, scale: float, bias: float) -> float:
    """How far two float32 computations of the in-batch accuracies of logits scale * x.y + bias
    may differ: the rows (either direction) whose best two cosines are closer than the rounding
    of a D-long dot product of unit vectors plus the scale and the bias (tests.tolerances)."""
    cosines = x.astype(np.float64) @ y.T.astype(np.float64)
    atol = dot_atol(D + 2) + 4 * unit_roundoff() * abs(bias) / scale
    return max(accuracy_slack(cosines, atol), accuracy_slack(cosines.T, atol))


def _assert_same(result, reference, slack: float) -> None:
    """Loss, metrics and gradients equal; the accuracies up to `slack` (_accuracy_slack)."""
    (loss, metrics), grads = result
    (ref_loss, ref_metrics), ref_grads = reference
    assert set(metrics) == set(ref_metrics)
    assert 0 < float(ref_metrics["i2t_accuracy"]) < 1  # the accuracy comparison means something
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
    for key in metrics:
        if key.endswith("_accuracy"):
            assert abs(float(metrics[key]) - float(ref_metrics[key])) <= slack + 1e-6, key
        else:
            np.testing.assert_allclose(float(metrics[key]), float(ref_metrics[key]), rtol=1e-5,
                                       err_msg=key)
    # fp32 logits s * x.y carry s times the rounding of x.y (on either path), so entries near
    # zero are compared at 1e-5 of the largest gradient entry rather than a fixed 1e-6.
    wrt = ("image_embed", "text_embed", "logit_scale", "logit_bias")  # clip: zero bias gradient
    for what, grad, ref in zip(wrt, grads, ref_grads, strict=True):
        np.testing.assert_allclose(np.asarray(grad), np.asarray(ref), rtol=1e-5,
                                   atol=max(1e-6, 1e-5 * float(np.abs(ref).max())),
                                   err_msg=f"d loss / d {what}")


def test_chunk_length_is_the_largest_divisor_not_above_chunk_size():
    assert [chunk_length(64, c) for c in (16, 12, 64, 100, 1)] == [16, 8, 64, 64, 1]
    assert chunk_length(48, 20) == 16


@pytest.mark.parametrize("name", ["clip", "siglip"])
@pytest.mark.parametrize("chunk_size", [16, 12, 100])  # divides B; does not (tiles of 8); >= B
def test_chunked_matches_dense(name, chunk_size):
    x, y = _pairs()
    for scale, bias in ((SCALE, BIAS), (100.0, -10.0)):
        reference = _loss_and_grads(name, "dense")(x, y, scale, bias)
        _assert_same(_loss_and_grads(name, "chunked", chunk_size)(x, y, scale, bias), reference,
                     _accuracy_slack(x, y, scale, bias))


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_chunked_extreme_temperatures_are_finite(name):
    x, y = _pairs(1)
    y[4] = x[4]  # a perfect match makes the logits as extreme as they get
    for log_scale in (-8.0, 12.0):
        (loss, _), grads = _loss_and_grads(name, "chunked", 16)(x, y, float(np.exp(log_scale)), -10.0)
        assert np.isfinite(float(loss))
        for g in grads:
            assert np.all(np.isfinite(np.asarray(g)))


def test_ring_outside_a_mesh_is_the_chunked_computation():
    x, y = _pairs()
    ring_fn, chunked_fn = _loss_and_grads("clip", "ring", 16), _loss_and_grads("clip", "chunked", 16)
    # The very same program (identical StableHLO), so bit-identical results on any host.
    assert ring_fn.lower(x, y, SCALE, BIAS).as_text() == chunked_fn.lower(x, y, SCALE, BIAS).as_text()
    ring, chunked = ring_fn(x, y, SCALE, BIAS), chunked_fn(x, y, SCALE, BIAS)
    for a, b in zip(jax.tree.leaves(ring), jax.tree.leaves(chunked), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("name", ["clip", "siglip"])
@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 4, 1), (2, 2, 2)])  # (data, fsdp, tensor)
def test_ring_matches_dense(name, shape):
    mesh = make_mesh(dict(zip(("data", "fsdp", "tensor"), shape, strict=True)))
    sharding = batch_sharding(mesh, DEFAULT_SHARDING_RULES)
    x, y = _pairs()
    reference = _loss_and_grads(name, "dense")(x, y, SCALE, BIAS)
    options = {"implementation": "ring", "chunk_size": 4}  # several tiles per device block

    def loss(x, y, scale, bias):
        outputs = {"image_embed": x, "text_embed": y, "logit_scale": scale, "logit_bias": bias}
        return get_objective(name).loss(outputs, options)

    with axis_rules(mesh, DEFAULT_SHARDING_RULES):  # traced inside: the ring sees the mesh
        result = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))(
            jax.device_put(x, sharding), jax.device_put(y, sharding), SCALE, BIAS)
    _assert_same(result, reference, _accuracy_slack(x, y, SCALE, BIAS))


def _compiled_train_step_shapes(tiny_config, implementation: str) -> set[tuple[int, ...]]:
    """Array shapes in the per-device compiled train step of the tiny CLIP at global batch B."""
    from vlmjax.train.loop import _step_spec
    from vlmjax.train.state import state_layout
    from vlmjax.train.step import jit_train_step

    tiny_config.objective.implementation = implementation
    tiny_config.train.batch_size = B
    cfg = tiny_config.to_dict()
    mesh, rules = make_mesh(cfg["mesh"]), cfg["sharding_rules"]
    assert dict(mesh.shape) == {"data": 8, "fsdp": 1, "tensor": 1}
    length = cfg["tokenizer"]["context_length"]
    layout = state_layout(cfg, cfg["tokenizer"]["vocab_size"], length, mesh)
    sharding = batch_sharding(mesh, rules)
    size = cfg["model"]["image"]["image_size"]
    batch = {"image": jax.ShapeDtypeStruct((B, size, size, 1), jnp.uint8, sharding=sharding),
             "text": jax.ShapeDtypeStruct((B, length), jnp.int32, sharding=sharding),
             "text_mask": jax.ShapeDtypeStruct((B, length), jnp.bool_, sharding=sharding)}
    step = jit_train_step(_step_spec(cfg, layout, mesh), layout.sharding, sharding, replicated(mesh))
    # Array shapes are fixed by the HLO passes (SPMD partitioning included); skipping LLVM's
    # optimisations only halves the compile time.
    hlo = step.lower(layout.abstract, batch).compile(compiler_options={
        "xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}).as_text()
    # Shapes print like f32[8,64]{1,0} or pred[8,8]; scalars f32[] have no dims.
    return {tuple(int(d) for d in dims.split(",")) for dims in re.findall(r"\b[a-z]+\d*\[([\d,]+)\]", hlo)}


def _spans_global_batch(shape: tuple[int, ...]) -> bool:
    """A global-batch dim (B; no model dim of the tiny config is 64) next to another >= B / 8:
    a [b, B] or [B, B] block of logits, or all texts gathered on one device as [B, D]."""
    return B in shape and sum(d >= B // 8 for d in shape) >= 2


def test_ring_train_step_holds_no_global_batch_logits(tiny_config):
    dense = _compiled_train_step_shapes(tiny_config.copy_and_resolve_references(), "dense")
    assert any(map(_spans_global_batch, dense)), "positive control: dense has [b, B] logits"
    ring = _compiled_train_step_shapes(tiny_config, "ring")
    assert not [s for s in ring if _spans_global_batch(s)]
    assert (B // 8, B // 8) in ring  # the per-device tile of logits (b = 8 <= chunk_size)


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_config_validation(tiny_config, name):
    if name == "siglip":
        tiny_config.objective.name = "siglip"
        tiny_config.model.use_logit_bias = True
    tiny_config.objective.implementation = "ring"
    tiny_config.objective.chunk_size = 256
    validate(tiny_config, num_devices=8)
    tiny_config.objective.implementation = "flash"
    with pytest.raises(ConfigError, match=r"config\.objective\.implementation='flash' .*'chunked'"):
        validate(tiny_config, num_devices=8)
    tiny_config.objective.implementation = "chunked"
    tiny_config.objective.chunk_size = 0
    with pytest.raises(ConfigError, match=r"config\.objective\.chunk_size=0 must be positive"):
        validate(tiny_config, num_devices=8)


def test_unknown_implementation_in_a_direct_call_raises():
    from vlmjax.objectives.contrastive import softmax_contrastive
    x, y = _pairs()
    with pytest.raises(ValueError, match="unknown contrastive loss implementation 'flash'"):
        softmax_contrastive(x, y, 1.0, implementation="flash")
