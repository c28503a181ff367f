"""FILIP's token-wise loss against a naive NumPy implementation: padding, asymmetry, chunked and
ring forms on 8-device meshes, token selection, extreme temperatures, and the compiled ring
holding no [B, n, B, m] tensor."""

import functools
import math
import re

import jax
import numpy as np
import pytest

from tests.tolerances import accuracy_slack, dot_atol, gamma
from vlmjax.config.defaults import DEFAULT_SHARDING_RULES
from vlmjax.objectives.registry import get_objective
from vlmjax.objectives.token_selection import select_tokens
from vlmjax.objectives.token_similarity import (
    blockwise_token_similarities,
    dense_token_similarities,
)
from vlmjax.parallel.logical import axis_rules
from vlmjax.parallel.mesh import batch_sharding, make_mesh

B, N, M, D = 16, 5, 7, 8
# Two float32 computations of a token-wise similarity (tests.tolerances): D-long dot products of
# unit vectors, a max (exact), a mean over at most M tokens (one more rounding for the divide).
SIM_ATOL = dot_atol(D) + 2 * gamma(M + 1)


def _unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)


def _tokens(seed: int = 0, batch: int = B):
    """Correlated image/text tokens; random text lengths incl. a one-token caption; one image
    with some tokens masked out (as token selection leaves them)."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(batch, 1, D))
    x = _unit(base + 0.8 * rng.normal(size=(batch, N, D)))
    y = _unit(base + 0.8 * rng.normal(size=(batch, M, D)))
    lengths = rng.integers(1, M + 1, size=batch)
    lengths[2] = 1
    y_mask = np.arange(M)[None] < lengths[:, None]
    x_mask = np.ones((batch, N), bool)
    x_mask[3, 1::2] = False
    return x, x_mask, y, y_mask


def naive_similarities(x, x_mask, y, y_mask) -> tuple[np.ndarray, np.ndarray]:
    """The definition, pair by pair, over valid tokens only (float64)."""
    s_image, s_text = np.zeros((len(x), len(y))), np.zeros((len(x), len(y)))
    for i in range(len(x)):
        for j in range(len(y)):
            sims = x[i][x_mask[i]].astype(np.float64) @ y[j][y_mask[j]].astype(np.float64).T
            s_image[i, j] = sims.max(axis=1).mean()  # each image token's best text token
            s_text[i, j] = sims.max(axis=0).mean()  # each text token's best image token
    return s_image, s_text


def naive_loss(s_image, s_text, scale_i, scale_t, eps) -> float:
    def ce(logits):  # rows against the diagonal, label-smoothed, via log-softmax
        logp = logits - logits.max(1, keepdims=True)
        logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
        b = len(logits)
        target = np.full((b, b), eps / b) + (1 - eps) * np.eye(b)
        return float(-(target * logp).sum(1).mean())
    return (ce(scale_i * s_image) + ce((scale_t * s_text).T)) / 2


def test_dense_and_blockwise_similarities_match_numpy():
    x, x_mask, y, y_mask = _tokens()
    want_image, want_text = naive_similarities(x, x_mask, y, y_mask)
    got = [dense_token_similarities(x, x_mask, y, y_mask)]
    for chunk in (4, 5, 16):  # divides B; does not (tiles of 4); the whole batch
        got.append(jax.jit(functools.partial(blockwise_token_similarities, chunk_size=chunk))(
            x, x_mask, y, y_mask))
    for s_image, s_text in got:
        np.testing.assert_allclose(s_image, want_image, atol=SIM_ATOL)
        np.testing.assert_allclose(s_text, want_text, atol=SIM_ATOL)


def test_the_two_directions_are_different_functions():
    x, x_mask, y, y_mask = _tokens()
    s_image, s_text = naive_similarities(x, x_mask, y, y_mask)
    assert not np.allclose(s_image, s_text, atol=1e-3)
    assert not np.allclose(s_image, s_text.T, atol=1e-3)
    # A one-token caption (text 2): s_I averages the image tokens' similarities to that token,
    # s_T takes the best one.
    sims = np.einsum("ikd,d->ik", x.astype(np.float64), y[2, 0].astype(np.float64))
    sims = np.where(x_mask, sims, np.nan)
    np.testing.assert_allclose(s_image[:, 2], np.nanmean(sims, axis=1), atol=1e-12)
    np.testing.assert_allclose(s_text[:, 2], np.nanmax(sims, axis=1), atol=1e-12)
    assert np.all(s_text[:, 2] > s_image[:, 2])
    # Padding is excluded: changing padded text tokens or masked image tokens changes nothing.
    y2, x2 = y.copy(), x.copy()
    y2[~y_mask] = 7.0
    x2[~x_mask] = -7.0
    for a, b in zip(naive_similarities(x2, x_mask, y2, y_mask), (s_image, s_text), strict=True):
        np.testing.assert_array_equal(a, b)
    dense = dense_token_similarities(x2, x_mask, y2, y_mask)
    np.testing.assert_allclose(dense[0], s_image, atol=SIM_ATOL)
    np.testing.assert_allclose(dense[1], s_text, atol=SIM_ATOL)


OPTIONS = {"label_smoothing": 0.1, "chunk_size": 4}
SCALES = (30.0, 12.0)


@functools.cache
def _loss_and_grads(implementation: str, chunk_size: int = 4, selection: float = 1.0,
                    group: int = 0):
    """jit of (x, y, y_mask, scale_i, scale_t) -> ((loss, metrics), grads) of the filip objective."""
    options = {**OPTIONS, "implementation": implementation, "chunk_size": chunk_size,
               "token_selection": selection, "selection_group": group}

    def loss(x, y, y_mask, scale_i, scale_t):
        outputs = {"image_tokens": x, "text_tokens": y, "logit_scale": scale_i,
                   "logit_scale_t2i": scale_t}
        return get_objective("filip").loss(outputs, options, {"text_mask": y_mask})

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 3, 4), has_aux=True))


def _slack(x, y, y_mask) -> float:
    """How far two float32 programs may put the in-batch accuracies of these tokens apart: the
    rows (either direction) whose best two similarities are closer than their rounding plus the
    scale's (tests.tolerances). x's tokens are all valid, as the objective sees them."""
    s_image, s_text = naive_similarities(x, np.ones(x.shape[:2], bool), y, y_mask)
    atol = SIM_ATOL + 2 * gamma(1)
    return max(accuracy_slack(s_image, atol), accuracy_slack(s_text.T, atol))


def _assert_same(result, reference, slack: float) -> None:
    """Loss, metrics and gradients equal; the accuracies (argmaxes of two different programs)
    up to `slack` (_slack)."""
    (loss, metrics), grads = result
    (ref_loss, ref_metrics), ref_grads = reference
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
    for key in ref_metrics:
        if key.endswith("_accuracy"):
            assert abs(float(metrics[key]) - float(ref_metrics[key])) <= slack + 1e-6, key
        else:
            np.testing.assert_allclose(float(metrics[key]), float(ref_metrics[key]), rtol=1e-6)
    for what, grad, ref in zip(("x", "y", "scale_i", "scale_t"), grads, ref_grads, strict=True):
        np.testing.assert_allclose(np.asarray(grad), np.asarray(ref), rtol=1e-4,
                                   atol=1e-5 * float(np.abs(ref).max()), err_msg=what)


def test_loss_matches_numpy():
    x, x_mask, y, y_mask = _tokens()
    x_mask[:] = True  # the objective's image tokens are all valid (no selection)
    s_image, s_text = naive_similarities(x, x_mask, y, y_mask)
    want = naive_loss(s_image, s_text, *SCALES, OPTIONS["label_smoothing"])
    # Logits are the similarities times a scale (one more rounding): argmaxes are decided except
    # on rows closer than that.
    atol = SIM_ATOL + 2 * gamma(1)
    labels = np.arange(B)
    for implementation in ("dense", "chunked"):
        (loss, metrics), _ = _loss_and_grads(implementation)(x, y, y_mask, *SCALES)
        np.testing.assert_allclose(float(loss), want, rtol=1e-5)
        for key, scores in (("i2t_accuracy", s_image), ("t2i_accuracy", s_text.T)):
            want_acc = np.mean(scores.argmax(1) == labels)
            assert abs(float(metrics[key]) - want_acc) <= accuracy_slack(scores, atol) + 1e-6, key
    assert 0 < float(metrics["i2t_accuracy"]) < 1


@pytest.mark.parametrize("chunk_size", [4, 5, 16])
def test_chunked_gradients_match_dense(chunk_size):
    x, _, y, y_mask = _tokens(1)
    _assert_same(_loss_and_grads("chunked", chunk_size)(x, y, y_mask, *SCALES),
                 _loss_and_grads("dense")(x, y, y_mask, *SCALES), _slack(x, y, y_mask))


def test_gradients_are_finite_at_extreme_temperatures():
    x, _, y, y_mask = _tokens(2)
    y[5, :N] = x[5]  # a perfect match: the most extreme logits there are
    for scales in ((1e-4, 1e-4), (1e4, 1e4), (1e4, 1e-4)):
        for implementation in ("dense", "chunked"):
            (loss, _), grads = _loss_and_grads(implementation)(x, y, y_mask, *scales)
            assert np.isfinite(float(loss))
            assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)


def _on_mesh(shape, implementation: str, *args, **kw):
    mesh = make_mesh(dict(zip(("data", "fsdp", "tensor"), shape, strict=True)))
    sharding = batch_sharding(mesh, DEFAULT_SHARDING_RULES)
    x, y, y_mask, *scales = args
    with axis_rules(mesh, DEFAULT_SHARDING_RULES):  # traced inside: the ring sees the mesh
        fn = _loss_and_grads.__wrapped__(implementation, **kw)
        return fn(*(jax.device_put(a, sharding) for a in (x, y, y_mask)), *scales)


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 4, 1), (2, 2, 2)])  # (data, fsdp, tensor)
@pytest.mark.parametrize("implementation", ["ring", "chunked"])
def test_mesh_of_8_devices_matches_dense(shape, implementation):
    x, _, y, y_mask = _tokens(3)
    reference = _loss_and_grads("dense")(x, y, y_mask, *SCALES)
    _assert_same(_on_mesh(shape, implementation, x, y, y_mask, *SCALES, chunk_size=2), reference,
                 _slack(x, y, y_mask))


def naive_selection(x, x_mask, y, y_mask, fraction, group):
    """Per group: each token's best similarity to any valid other-modality token; top slots."""
    keep_x, keep_y = math.ceil(fraction * N), math.ceil(fraction * M)
    out = []
    for start in range(0, len(x), group):
        g = slice(start, start + group)
        sims = np.einsum("ikd,jrd->ikjr", x[g], y[g])
        x_score = np.where(y_mask[g][None, None], sims, -np.inf).max(axis=(2, 3))
        y_score = np.where(x_mask[g][:, :, None, None], sims, -np.inf).max(axis=(0, 1))
        for tokens, mask, score, keep in ((x[g], x_mask[g], x_score, keep_x),
                                          (y[g], y_mask[g], y_score, keep_y)):
            ranked = np.where(mask, score, -np.inf)
            # The choice is decided at float32 precision: the last kept and first dropped valid
            # token scores (maxima of D-long dot products of unit vectors) are further apart.
            edge = -np.sort(-ranked, axis=1)[:, keep - 1: keep + 1]
            edge = edge[np.isfinite(edge).all(1)]
            assert np.all(edge[:, 0] - edge[:, 1] > 2 * dot_atol(D)), "near-tie in the test data"
            chosen = np.sort(np.argsort(-ranked, axis=1, kind="stable")[:, :keep], axis=1)
            out.append((np.take_along_axis(tokens, chosen[..., None], 1),
                        np.take_along_axis(mask, chosen, 1)))
    x_sel = np.concatenate([o[0] for o in out[0::2]]), np.concatenate([o[1] for o in out[0::2]])
    y_sel = np.concatenate([o[0] for o in out[1::2]]), np.concatenate([o[1] for o in out[1::2]])
    return (*x_sel, *y_sel)


def test_token_selection_matches_numpy_and_never_picks_padding():
    x, x_mask, y, y_mask = _tokens(4)
    got = select_tokens(x, x_mask, y, y_mask, fraction=0.5, group=4, chunk_size=3)
    want = naive_selection(x, x_mask, y, y_mask, 0.5, 4)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(a), b, atol=1e-6)
    assert got[0].shape == (B, 3, D) and got[2].shape == (B, 4, D)
    # Short captions keep all their real tokens and fill the rest with masked slots.
    np.testing.assert_array_equal(np.asarray(got[3]).sum(1), np.minimum(y_mask.sum(1), 4))


def test_token_selection_with_a_fixed_group_is_the_same_on_any_mesh():
    x, _, y, y_mask = _tokens(5)
    all_x = np.ones(x.shape[:2], bool)
    kw = dict(chunk_size=2, selection=0.5, group=4)
    reference = _loss_and_grads("dense", **kw)(x, y, y_mask, *SCALES)
    # The selection is decided at float32 precision on these tokens (naive_selection checks
    # there is no near-tie), so both programs score the same tokens; the accuracies' slack is
    # that of the selected tokens.
    x4, _, y4, y4_mask = naive_selection(x, all_x, y, y_mask, 0.5, 4)
    _assert_same(_on_mesh((4, 1, 2), "ring", x, y, y_mask, *SCALES, **kw), reference,
                 _slack(x4, y4, y4_mask))
    # The default group is one device's batch shard: B / 8 examples on 8 batch shards.
    default = _on_mesh((8, 1, 1), "ring", x, y, y_mask, *SCALES, chunk_size=2, selection=0.5)
    x2, _, y2, y2_mask = naive_selection(x, all_x, y, y_mask, 0.5, B // 8)
    _assert_same(default, _loss_and_grads("dense", selection=0.5, group=B // 8)(x, y, y_mask, *SCALES),
                 _slack(x2, y2, y2_mask))


def test_compiled_ring_holds_only_per_device_tiles():
    """The dense loss materialises [B, n, B, m]; the ring's largest 4-d array is one tile."""
    x, _, y, y_mask = _tokens(6, batch=64)
    mesh = make_mesh({"data": 8, "fsdp": 1, "tensor": 1})
    sharding = batch_sharding(mesh, DEFAULT_SHARDING_RULES)
    args = [jax.device_put(a, sharding) for a in (x, y, y_mask)] + list(SCALES)

    def shapes(implementation: str) -> set[tuple[int, ...]]:
        with axis_rules(mesh, DEFAULT_SHARDING_RULES):
            fn = _loss_and_grads.__wrapped__(implementation, chunk_size=4)
            hlo = fn.lower(*args).compile(compiler_options={
                "xla_backend_optimization_level": 0,
                "xla_llvm_disable_expensive_passes": True}).as_text()
        return {tuple(int(d) for d in dims.split(","))
                for dims in re.findall(r"\b[a-z]+\d*\[([\d,]+)\]", hlo)}

    four_d = lambda found: {s for s in found if len(s) == 4 and s[1] == N and s[3] == M}  # noqa: E731
    assert max(s[0] * s[2] for s in four_d(shapes("dense"))) >= 64 * 64 // 8  # positive control
    assert four_d(shapes("ring")) <= {(4, N, 4, M)}
    assert (4, N, 4, M) in four_d(shapes("ring"))
