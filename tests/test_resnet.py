"""The ResNet image tower: convolutions and pooling against NumPy, the attention pool against
plain multi-head attention, BatchNorm's three modes (batch statistics and running-average
updates in training, running averages in evaluation, frozen), named sizes, one-line config
errors, and a ResNet CLIP on a 2x2x2 mesh equal to one device (BatchNorm over the global batch).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.conftest import REPO
from tests.test_sharding import assert_trees_close
from vlmjax.config import load_config_file, validate
from vlmjax.errors import ConfigError
from vlmjax.models.convolution import avg_pool, conv2d
from vlmjax.models.resnet import AttentionPool2d, ModifiedResNet, ResNetConfig, resolve_resnet
from vlmjax.models.tower import TowerSettings

TINY = os.path.join(REPO, "configs", "test", "tiny_resnet.py")


def numpy_conv(x: np.ndarray, k: np.ndarray, stride: int) -> np.ndarray:
    """PyTorch's Conv2d(padding=k // 2, stride) in NHWC / HWIO, in float64 loops over taps."""
    kh, kw, _, cout = k.shape
    b, h, w, _ = x.shape
    ph, pw = kh // 2, kw // 2
    xp = np.pad(x.astype(np.float64), ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    ho, wo = (h + 2 * ph - kh) // stride + 1, (w + 2 * pw - kw) // stride + 1
    out = np.zeros((b, ho, wo, cout))
    for i in range(kh):
        for j in range(kw):
            window = xp[:, i: i + stride * ho: stride, j: j + stride * wo: stride]
            out += window @ k[i, j].astype(np.float64)
    return out


@pytest.mark.parametrize("impl", ["xla", "im2col"])
@pytest.mark.parametrize("size,kernel,stride", [(8, 3, 1), (8, 3, 2), (7, 3, 2), (6, 1, 1),
                                                (9, 3, 1)])
def test_convolutions_match_pytorch_padding_in_numpy(impl, size, kernel, stride):
    rng = np.random.default_rng(size * 10 + stride)
    x = rng.normal(size=(2, size, size, 3)).astype(np.float32)
    k = rng.normal(size=(kernel, kernel, 3, 5)).astype(np.float32)
    got = np.asarray(conv2d(jnp.asarray(x), jnp.asarray(k), stride, impl))
    want = numpy_conv(x, k, stride)
    assert got.shape == want.shape
    # A sum of kernel^2 * 3 products of unit normals: float32 rounding well under 1e-5.
    np.testing.assert_allclose(got, want, atol=1e-5 * kernel * kernel, rtol=0)


def test_average_pool_is_pytorchs_non_overlapping_mean():
    x = np.random.default_rng(0).normal(size=(2, 6, 4, 3)).astype(np.float32)
    got = np.asarray(avg_pool(jnp.asarray(x), 2))
    want = x.reshape(2, 3, 2, 2, 2, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(avg_pool(jnp.asarray(x), 1)), x)


def test_attention_pool_equals_multi_head_attention_from_the_mean_token():
    """The reassociated pool (module doc of models.resnet) against plain attention in NumPy:
    q from the mean token, keys and values (with their biases, the key bias nonzero) from the
    mean and every position, softmax over all of them, output projection; tokens are the
    positions through the value and output projections."""
    grid, dim, heads, out_dim = 3, 12, 3, 5
    pool = AttentionPool2d(grid, dim, heads, out_dim, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(1)
    for name in ("query_bias", "key_bias", "value_bias", "out_bias"):
        getattr(pool, name)[...] = jnp.asarray(rng.normal(size=getattr(pool, name).shape), jnp.float32)
    x = rng.normal(size=(2, grid * grid, dim)).astype(np.float32)
    pooled, tokens = pool(jnp.asarray(x))
    p = {k: np.asarray(v, np.float64) for k, v in nnx.to_pure_dict(nnx.state(pool)).items()}
    h = np.concatenate([x.mean(axis=1, keepdims=True), x], axis=1) + p["pos_embed"]
    q = np.einsum("bd,dnk->bnk", h[:, 0], p["query"]) + p["query_bias"]
    k = np.einsum("btd,dnk->btnk", h, p["key"]) + p["key_bias"]
    v = np.einsum("btd,dnk->btnk", h, p["value"]) + p["value_bias"]
    s = np.einsum("bnk,btnk->bnt", q, k) / np.sqrt(dim // heads)
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    o = np.einsum("bnt,btnk->bnk", a, v)
    want_pooled = np.einsum("bnk,nke->be", o, p["out"]) + p["out_bias"]
    want_tokens = np.einsum("btnk,nke->bte", v[:, 1:], p["out"]) + p["out_bias"]
    np.testing.assert_allclose(np.asarray(pooled), want_pooled, atol=2e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(tokens), want_tokens, atol=2e-5, rtol=0)


def _tower(**changes) -> ModifiedResNet:
    cfg = ResNetConfig(image_size=16, channels=2, layers=(1, 1), width=8, head_width=16,
                       output_dim=8, stem_stride=2, strides=(2, 1), **changes)
    return ModifiedResNet(cfg, TowerSettings(), rngs=nnx.Rngs(0))


def _stats(tower: ModifiedResNet) -> dict:
    return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(tower, nnx.BatchStat)))


def test_batch_norm_trains_on_batch_statistics_and_evaluates_on_running_averages():
    tower = _tower()
    images = jax.random.normal(jax.random.key(0), (6, 16, 16, 2))
    before = _stats(tower)
    evaluated = tower(images)["pooled"]
    np.testing.assert_array_equal(tower(images)["pooled"], evaluated)  # evaluation: pure
    jax.tree.map(np.testing.assert_array_equal, _stats(tower), before)
    trained = tower(images, train=True)["pooled"]
    assert not np.allclose(trained, evaluated)  # batch statistics are not the initial (0, 1)
    # The stem's first BatchNorm: running mean = 0.9 * 0 + 0.1 * the batch mean of conv1's
    # output, running var = 0.9 * 1 + 0.1 * its (biased) batch variance, computed in NumPy.
    pre = numpy_conv(np.asarray(images), np.asarray(tower.conv1.kernel[...]), 2)
    mean, var = pre.mean(axis=(0, 1, 2)), pre.var(axis=(0, 1, 2))
    np.testing.assert_allclose(np.asarray(tower.bn1.mean[...]), 0.1 * mean, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(tower.bn1.var[...]), 0.9 + 0.1 * var, rtol=1e-4)
    # Training-mode output of that BatchNorm is normalised by the batch's own statistics.
    tower2 = _tower()
    x = tower2.conv1(images)
    y = np.asarray(tower2.bn1(x, use_running_average=False))
    np.testing.assert_allclose(y, (pre - mean) / np.sqrt(var + 1e-5), atol=1e-4)


def test_frozen_batch_norm_trains_on_running_averages_and_keeps_them():
    tower = _tower(freeze_norm=True)
    images = jax.random.normal(jax.random.key(1), (4, 16, 16, 2))
    before = _stats(tower)
    np.testing.assert_array_equal(tower(images, train=True)["pooled"], tower(images)["pooled"])
    jax.tree.map(np.testing.assert_array_equal, _stats(tower), before)


def test_named_sizes_are_open_clips():
    named = {"layers": (), "width": 0, "output_dim": 0}
    assert resolve_resnet({"variant": "RN50", **named})["layers"] == (3, 4, 6, 3)
    rn = resolve_resnet({"variant": "RN50x4", "layers": (), "width": 0, "output_dim": 0})
    assert (rn["width"], rn["output_dim"]) == (80, 640)
    with pytest.raises(ConfigError, match=r"config\.model\.image\.width=32 conflicts with variant 'RN101'"):
        resolve_resnet({"variant": "RN101", "layers": (), "width": 32, "output_dim": 0})
    with pytest.raises(ConfigError, match="is not a ResNet variant"):
        resolve_resnet({"variant": "RN18", "layers": (), "width": 0, "output_dim": 0})


@pytest.mark.parametrize("change,message", [
    (dict(image_size=30), r"config\.model\.image\.image_size \(30\) is not a multiple of the "
                          r"ResNet's stride \(4 = stem 2 x stages \(2, 1\)\)"),
    (dict(layers=()), r"config\.model\.image\.layers is \(\)"),
    (dict(strides=(2,)), r"config\.model\.image\.strides is \(2,\); give one positive stride per"),
    (dict(head_width=24), r"config\.model\.image\.head_width \(24\) does not divide"),
    (dict(stem_stride=3), r"config\.model\.image\.stem_stride is 3"),
    (dict(width=7), r"config\.model\.image\.width is 7"),
    (dict(conv="cudnn"), r"config\.model\.image\.conv is 'cudnn'"),
    (dict(locked=True), r"config\.model\.image\.freeze_norm is False but "
                        r"train\.locked_tower='image' \(LiT\)"),
])
def test_unusable_resnet_settings_fail_validation_in_one_line(change, message):
    config, change = load_config_file(TINY), dict(change)
    if change.pop("locked", False):
        config.train.locked_tower = "image"
    config.model.image.update(change)
    with pytest.raises(ConfigError, match=message) as error:
        validate(config, 8)
    assert "\n" not in str(error.value)


def test_rn50_clip_validates_with_its_embedding_as_the_pool_output():
    config = load_config_file(TINY)
    config.model.image.update(variant="RN50", layers=(), width=0, output_dim=0, strides=(),
                              stem_stride=4, head_width=64, image_size=224, channels=3)
    config.model.embed_dim = 1024
    config.evals = {}  # the 28 px grayscale evaluation data is not RN50's
    validate(config, 8, training=False)  # evaluation: the 28 px training data is not read
    config.model.embed_dim = 512  # proj='none' needs the pool's 1024
    with pytest.raises(ConfigError, match=r"proj='none' needs model\.embed_dim \(512\) == the "
                                          r"image width \(1024\)"):
        validate(config, 8, training=False)


# ------------------------------------------------------------------- the mesh

VOCAB, CONTEXT, BATCH = 64, 12, 32


def _mesh_train(mesh: tuple[int, int, int], devices: list, steps: int = 3) -> tuple:
    """(losses of `steps` updates, the first step's gradients, the final BatchNorm statistics)."""
    from vlmjax.parallel.mesh import batch_sharding, make_mesh, replicated
    from vlmjax.train.loop import _step_spec
    from vlmjax.train.state import model_builder, state_layout
    from vlmjax.train.step import jit_train_step, loss_and_grads, step_key
    config = load_config_file(TINY)
    config.mesh.update(data=mesh[0], fsdp=mesh[1], tensor=mesh[2])
    cfg = config.to_dict()
    m = make_mesh(cfg["mesh"], devices)
    layout = state_layout(cfg, VOCAB, CONTEXT, m)
    sharding = batch_sharding(m, cfg["sharding_rules"])
    spec = _step_spec(cfg, layout, m)
    step = jit_train_step(spec, layout.sharding, sharding, replicated(m))
    state = layout.init(cfg["seed"], model_builder(cfg, VOCAB, CONTEXT))
    rng = np.random.default_rng(0)
    losses, grads = [], None
    for _ in range(steps):
        lengths = rng.integers(1, CONTEXT + 1, size=BATCH)
        batch = jax.device_put({
            "image": rng.integers(0, 256, size=(BATCH, 28, 28, 1)).astype(np.uint8),
            "text": rng.integers(0, VOCAB, size=(BATCH, CONTEXT)).astype(np.int32),
            "text_mask": np.arange(CONTEXT)[None] < lengths[:, None]}, sharding)
        if grads is None:
            grads = jax.device_get(jax.jit(lambda s, b: loss_and_grads(
                spec, s["params"], s["model_state"], b, step_key(cfg["seed"], s["step"]))[0])(
                    state, batch))
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    return losses, grads, jax.device_get(state["model_state"])


def test_resnet_clip_on_a_2x2x2_mesh_equals_one_device():
    """BatchNorm's batch statistics are over the GLOBAL batch on any mesh (jit's global view):
    the gradients, the losses of three updates and the running statistics they leave equal
    the one-device run's. (Parameters are compared through the losses and statistics: Adam
    scales every update to the learning rate, so a parameter whose gradient is at the rounding
    floor, a BatchNorm bias ahead of another BatchNorm, moves in a rounding-decided direction.)"""
    want_losses, want_grads, want_stats = _mesh_train((1, 1, 1), jax.devices()[:1])
    losses, grads, stats = _mesh_train((2, 2, 2), jax.devices())
    np.testing.assert_allclose(losses, want_losses, rtol=1e-5)
    assert losses[-1] != losses[0]
    assert_trees_close(grads, want_grads)
    assert_trees_close(stats, want_stats)
    assert np.abs(stats["image"]["bn1"]["mean"]).max() > 1e-3  # the statistics moved
