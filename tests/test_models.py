"""Model shapes, pooling, padding masks, activations, named sizes and full-size shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vlmjax.config import base_config
from vlmjax.errors import ConfigError
from vlmjax.models import layers
from vlmjax.models.registry import FAMILIES
from vlmjax.models.sizes import resolve_vit
from vlmjax.models.text import last_valid_index
from vlmjax.models.two_tower import TwoTower
from vlmjax.parallel.mesh import logical_axes_of


def _model_cfg(pool="cls", **image):
    c = base_config().model.to_dict()
    c["embed_dim"] = 8
    c["image"].update(image_size=8, channels=3, patch_size=4, width=16, depth=2, heads=2,
                      mlp_dim=32, pool=pool, **image)
    c["text"].update(width=16, depth=2, heads=2, mlp_dim=32)
    return c


@pytest.mark.parametrize("pool", ["cls", "gap", "map"])
def test_two_tower_output_shapes_and_norms(pool):
    model = TwoTower(_model_cfg(pool), vocab_size=50, context_length=7, rngs=nnx.Rngs(0))
    images = jax.random.normal(jax.random.key(1), (3, 8, 8, 3))
    ids = jnp.ones((3, 7), jnp.int32)
    mask = jnp.arange(7)[None] < jnp.array([[2], [7], [4]])
    out, tokens = nnx.jit(lambda m, x, i, k: (m({"image": x, "text": i, "text_mask": k}),
                                              m.image(x)["tokens"]))(model, images, ids, mask)
    assert out["image_embed"].shape == (3, 8) and out["text_embed"].shape == (3, 8)
    np.testing.assert_allclose(np.linalg.norm(out["image_embed"], axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out["text_embed"], axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(float(out["logit_scale"]), 1 / 0.07, rtol=1e-5)
    assert tokens.shape == (3, 4, 16)  # 4 patches; the class token is not among them


def test_patchify_is_row_major():
    model = TwoTower(_model_cfg(), 10, 4, rngs=nnx.Rngs(0))
    images = jnp.arange(8 * 8 * 3, dtype=jnp.float32).reshape(1, 8, 8, 3)
    patches = model.image.patchify(images)
    np.testing.assert_array_equal(patches[0, 1], images[0, 0:4, 4:8])  # top-right patch
    np.testing.assert_array_equal(patches[0, 2], images[0, 4:8, 0:4])  # bottom-left patch


def test_text_embedding_ignores_padding_and_pools_last_real_token():
    model = TwoTower(_model_cfg(), vocab_size=50, context_length=8, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 50, size=(4, 8)).astype(np.int32)
    lengths = np.array([1, 3, 8, 5])  # includes a one-token caption
    mask = np.arange(8)[None] < lengths[:, None]
    other = np.where(mask, ids, rng.integers(0, 50, size=ids.shape)).astype(np.int32)
    encode = nnx.jit(lambda m, i, k: m.encode_text(i, k))  # one program per shape, not per op
    a = encode(model, jnp.asarray(ids), jnp.asarray(mask))
    b = encode(model, jnp.asarray(other), jnp.asarray(mask))
    np.testing.assert_allclose(a, b, atol=1e-6)  # padded ids do not matter
    # The pooled token is the last real one: a caption truncated to it embeds identically.
    for i, n in enumerate(lengths):
        alone = encode(model, jnp.asarray(ids[i:i + 1, :n]), jnp.ones((1, n), bool))
        np.testing.assert_allclose(alone[0], a[i], atol=1e-5)


def test_last_valid_index():
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], bool)
    np.testing.assert_array_equal(last_valid_index(jnp.asarray(mask)), [1, 3, 0])


def test_causal_attention_does_not_see_the_future():
    model = TwoTower(_model_cfg(), 50, 6, rngs=nnx.Rngs(0))
    ids = jnp.asarray([[5, 6, 7, 8, 9, 10]], jnp.int32)
    changed = ids.at[0, 4:].set(3)
    tokens_a = model.text(ids, jnp.ones((1, 6), bool))["tokens"]
    tokens_b = model.text(changed, jnp.ones((1, 6), bool))["tokens"]
    np.testing.assert_allclose(tokens_a[0, :4], tokens_b[0, :4], atol=1e-6)
    assert not np.allclose(tokens_a[0, 4:], tokens_b[0, 4:])


def test_activations():
    x = jnp.linspace(-4, 4, 9)
    np.testing.assert_allclose(layers.ACTIVATIONS["quick_gelu"](x),
                               np.asarray(x) / (1 + np.exp(-1.702 * np.asarray(x))), rtol=1e-5)
    from math import erf, sqrt
    exact = [v * 0.5 * (1 + erf(v / sqrt(2))) for v in np.asarray(x, np.float64)]
    np.testing.assert_allclose(layers.ACTIVATIONS["gelu"](x), exact, rtol=1e-5, atol=1e-6)


def test_attention_matches_numpy_softmax_attention():
    attn = layers.Attention(8, 2, rngs=nnx.Rngs(0))
    x = np.random.default_rng(0).normal(size=(2, 5, 8)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    got = attn(jnp.asarray(x), mask=jnp.asarray(mask))
    q = np.einsum("btd,dnh->btnh", x, attn.query[...]) + attn.query_bias[...]
    k = np.einsum("btd,dnh->btnh", x, attn.key[...]) + attn.key_bias[...]
    v = np.einsum("btd,dnh->btnh", x, attn.value[...]) + attn.value_bias[...]
    s = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(4)
    s = np.where(mask[:, None, None, :], s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    o = np.einsum("bnts,bsnh->btnh", p, v)
    want = np.einsum("btnh,nhd->btd", o, attn.out[...]) + attn.out_bias[...]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_logit_scale_clamp():
    clamp = lambda p: FAMILIES["two_tower"].post_update(p, {"max_logit_scale": 100.0})  # noqa: E731
    clamped = clamp({"logit_scale": jnp.float32(7.0), "other": jnp.ones(2)})
    np.testing.assert_allclose(float(clamped["logit_scale"]), np.log(100.0), rtol=1e-6)
    assert float(clamp({"logit_scale": jnp.float32(1.0)})["logit_scale"]) == 1.0


def test_named_variant_resolution_and_conflicts():
    assert resolve_vit({"variant": "B/16", "width": 0, "depth": 0, "heads": 0, "mlp_dim": 0})[
        "patch_size"] == 16
    with pytest.raises(ConfigError, match="conflicts with variant"):
        resolve_vit({"variant": "B/16", "width": 512, "depth": 0, "heads": 0, "mlp_dim": 0})
    with pytest.raises(ConfigError, match="is not a ViT variant"):
        resolve_vit({"variant": "Base16"})
    with pytest.raises(ConfigError, match="not set and there is no variant"):
        resolve_vit({"variant": "", "width": 64, "depth": 0, "heads": 2, "mlp_dim": 8})


def test_full_size_vit_b16_clip_has_the_published_parameter_count():
    """OpenAI CLIP ViT-B/16 has 149,620,737 parameters (open_clip's count, logit scale included).

    vlmjax adds a 768-entry bias to the patch embedding (OpenAI's conv has none); everything else
    (ln_pre, separate q/k/v with biases = fused in_proj) has the same size.
    """
    c = base_config().model.to_dict()
    c["image"].update(variant="B/16", image_size=224, ln_pre=True)
    c["text"].update(width=512, depth=12, heads=8, mlp_dim=2048)
    c["embed_dim"] = 512
    abstract = nnx.eval_shape(lambda: TwoTower(c, 49408, 77, rngs=nnx.Rngs(0)))
    _, state = nnx.split(abstract)
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.to_pure_dict(state)))
    assert count == 149_620_737 + 768
    axes = logical_axes_of(state)
    assert tuple(axes["image"]["encoder"]["layers"][0]["mlp"]["fc1"]) == ("embed", "mlp")
    assert tuple(axes["text"]["token_embed"]) == ("vocab", "embed")
