"""Dense features (models.dense) against NumPy re-implementations of MaskCLIP's and SCLIP's last
block, for unrolled and scanned ViTs and a ResNet tower; segmentation metrics against NumPy."""

import jax
import numpy as np
import pytest
from flax import nnx

from vlmjax.config import base_config
from vlmjax.errors import ConfigError
from vlmjax.evaluators.dense_metrics import (
    IGNORE,
    confusion,
    foreground_labels,
    iou_per_class,
    segmentation_metrics,
)
from vlmjax.models.dense import dense_embeddings, encoder_layers, vit_embed
from vlmjax.models.two_tower import TwoTower


def _model(scan: bool, pool: str = "cls", activation: str = "quick_gelu") -> TwoTower:
    c = base_config().model.to_dict()
    c.update(embed_dim=8, scan_layers=scan, activation=activation)
    c["image"].update(image_size=12, channels=3, patch_size=4, width=16, depth=3, heads=2,
                      mlp_dim=32, pool=pool)
    c["text"].update(width=16, depth=1, heads=2, mlp_dim=32)
    return TwoTower(c, vocab_size=20, context_length=5, rngs=nnx.Rngs(3))


def _np(x) -> np.ndarray:
    return np.asarray(x, np.float64)


def _layer_norm(x, ln, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * _np(ln.scale[...]) + _np(ln.bias[...])


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _reference(model: TwoTower, x_in: np.ndarray, method: str) -> np.ndarray:
    """The last block of the ViT in NumPy: MaskCLIP's value path or SCLIP's q-q + k-k attention,
    residual and MLP kept, then ln_post, projection and L2 normalisation."""
    block = encoder_layers(model.image.encoder)[-1]
    attn = block.attn
    h = _layer_norm(x_in, block.ln_attn)
    proj = {n: np.einsum("btd,dnh->btnh", h, _np(getattr(attn, n)[...])) + _np(
        getattr(attn, f"{n}_bias")[...]) for n in ("query", "key", "value")}
    if method == "maskclip":
        mixed = proj["value"]
    else:
        scale = 1 / np.sqrt(proj["query"].shape[-1])
        weights = sum(_softmax(np.einsum("btnh,bsnh->bnts", proj[n], proj[n]) * scale)
                      for n in ("query", "key"))
        mixed = np.einsum("bnts,bsnh->btnh", weights, proj["value"])
    x = x_in + np.einsum("btnh,nhd->btd", mixed, _np(attn.out[...])) + _np(attn.out_bias[...])
    hidden = _layer_norm(x, block.ln_mlp) @ _np(block.mlp.fc1[...]) + _np(block.mlp.fc1_bias[...])
    hidden = hidden / (1 + np.exp(-1.702 * hidden))  # quick_gelu
    x = x + hidden @ _np(block.mlp.fc2[...]) + _np(block.mlp.fc2_bias[...])
    x = _layer_norm(x, model.image.ln_post)
    tokens = x[:, 1:] if model.image.cfg.pool == "cls" else x
    out = tokens @ _np(model.image_proj.kernel[...])
    out = out / np.linalg.norm(out, axis=-1, keepdims=True)
    g = int(np.sqrt(out.shape[1]))
    return out.reshape(out.shape[0], g, g, -1)


@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("pool", ["cls", "gap"])
def test_maskclip_and_sclip_match_a_numpy_last_block(scan, pool):
    model = _model(scan, pool)
    images = jax.random.normal(jax.random.key(0), (2, 12, 12, 3))
    # The embedding replica plus the encoder is the tower's own encode_tokens.
    np.testing.assert_allclose(model.image.encoder(vit_embed(model.image, images)),
                               model.image.encode_tokens(images), rtol=1e-5, atol=1e-5)
    x = vit_embed(model.image, images)
    for block in encoder_layers(model.image.encoder)[:-1]:
        x = block(x)
    for method in ("maskclip", "sclip"):
        got = dense_embeddings(model, images, method)
        assert got.shape == (2, 3, 3, 8)
        np.testing.assert_allclose(got, _reference(model, _np(x), method), atol=2e-5)
    tokens = dense_embeddings(model, images, "tokens")
    np.testing.assert_allclose(tokens.reshape(2, 9, 8), model.encode_image_tokens(images),
                               rtol=1e-6)
    for method in ("tokens", "maskclip"):  # before normalisation: the same directions
        raw = dense_embeddings(model, images, method, normalize=False)
        np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=-1, keepdims=True),
                                   dense_embeddings(model, images, method), atol=1e-5)
    # The three readings differ: MaskCLIP drops the last attention, SCLIP rewrites it.
    assert not np.allclose(tokens, dense_embeddings(model, images, "maskclip"), atol=1e-3)


def test_scanned_and_unrolled_encoders_give_the_same_dense_features():
    unrolled, scanned = _model(False), _model(True)
    params = nnx.state(unrolled, nnx.Param)
    from vlmjax.models.stacked import stack_layer_params
    nnx.update(scanned, stack_layer_params(nnx.to_pure_dict(params)))
    images = jax.random.normal(jax.random.key(1), (2, 12, 12, 3))
    for method in ("tokens", "maskclip", "sclip"):
        np.testing.assert_allclose(dense_embeddings(scanned, images, method),
                                   dense_embeddings(unrolled, images, method), atol=1e-5)


def test_resnet_tokens_are_the_value_path_and_sclip_is_refused():
    c = base_config().model.to_dict()
    c.update(embed_dim=16)
    c["image"] = {**c["image"], "kind": "resnet", "image_size": 16, "channels": 3,
                  "layers": (1, 1), "width": 8, "head_width": 8, "output_dim": 16,
                  "stem_stride": 2, "strides": (1, 2), "proj": "none"}
    import ml_collections

    from vlmjax.config.schema import complete  # the ResNet tower's other keys
    config = complete(ml_collections.ConfigDict({**base_config().to_dict(), "model": c})).to_dict()
    model = TwoTower(config["model"], vocab_size=20, context_length=5, rngs=nnx.Rngs(0))
    images = jax.random.normal(jax.random.key(2), (2, 16, 16, 3))
    dense = nnx.jit(dense_embeddings, static_argnames="method")  # eager convolutions are slow
    tokens = dense(model, images, "tokens")
    np.testing.assert_allclose(dense(model, images, "maskclip"), tokens)
    assert tokens.shape[1:3] == (4, 4)  # the final feature map: 16 / 2 (stem) / 2 (stage 2)
    with pytest.raises(ConfigError, match="'sclip' rewrites a ViT's last attention block"):
        dense_embeddings(model, images, "sclip")
    with pytest.raises(ConfigError, match="unknown"):
        dense_embeddings(model, images, "clearclip")


def test_confusion_and_iou_against_hand_counts():
    labels = np.array([[0, 0, 1, 1], [2, 2, IGNORE, 1]])
    predicted = np.array([[0, 1, 1, 1], [2, 0, 2, 3]])
    matrix = confusion(labels, predicted, 4)
    # counted pixels: 7 (one ignored); (true, predicted) pairs listed by hand
    expected = np.zeros((4, 4), int)
    for t, p in [(0, 0), (0, 1), (1, 1), (1, 1), (2, 2), (2, 0), (1, 3)]:
        expected[t, p] += 1
    np.testing.assert_array_equal(matrix, expected)
    iou = iou_per_class(matrix)
    # class 0: tp 1, fp 1 (a 2), fn 1 -> 1/3; class 1: tp 2, fp 1, fn 1 -> 2/4; class 2: 1/2;
    # class 3: predicted once, never true -> 0; nothing is NaN
    np.testing.assert_allclose(iou, [1 / 3, 1 / 2, 1 / 2, 0.0])
    metrics = segmentation_metrics(matrix, ["a", "b", "c", "d"])
    assert metrics["miou"] == pytest.approx(np.mean([1 / 3, 1 / 2, 1 / 2, 0]))
    assert metrics["pixel_acc"] == pytest.approx(4 / 7)
    assert metrics["iou/b"] == pytest.approx(0.5)
    # A class neither present nor predicted is NaN and left out of the mean (mmseg's nanmean).
    matrix5 = confusion(labels, predicted, 5)
    assert np.isnan(iou_per_class(matrix5)[4])
    assert segmentation_metrics(matrix5, list("abcde"))["miou"] == pytest.approx(metrics["miou"])
    with pytest.raises(ValueError, match="predictions outside"):
        confusion(labels, predicted + 3, 4)


def test_random_confusions_match_a_per_class_numpy_iou():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, size=(3, 20, 20))
    labels[rng.random(labels.shape) < 0.1] = IGNORE
    predicted = rng.integers(0, 6, size=labels.shape)
    metrics = segmentation_metrics(confusion(labels, predicted, 6), [str(k) for k in range(6)])
    valid = labels != IGNORE
    ious = [np.sum(valid & (labels == k) & (predicted == k)) /
            np.sum(valid & ((labels == k) | (predicted == k))) for k in range(6)]
    assert metrics["miou"] == pytest.approx(np.mean(ious))
    assert metrics["pixel_acc"] == pytest.approx(np.mean(labels[valid] == predicted[valid]))


def test_foreground_labels_drop_background_and_shift_later_classes():
    labels = np.array([0, 1, 2, 3, IGNORE])
    np.testing.assert_array_equal(foreground_labels(labels, 0), [IGNORE, 0, 1, 2, IGNORE])
    np.testing.assert_array_equal(foreground_labels(labels, 2), [0, 1, IGNORE, 2, IGNORE])
    np.testing.assert_array_equal(foreground_labels(labels, -1), labels)
