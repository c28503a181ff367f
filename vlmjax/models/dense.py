"""Dense image features for zero-shot prediction: one joint-space embedding per patch.

Three ways to read per-patch embeddings out of a contrastive model (`DENSE_METHODS`), all
projected by the family's own image projection and L2-normalised, shaped [b, h, w, e]:
- "tokens": the tower's tokens through the projection (`encode_image_tokens`), as trained;
- "maskclip" (MaskCLIP, Zhou et al. 2022): the last ViT block without its query-key attention:
  each token's value path, x + out(value(ln(x))), then the block's residual MLP, ln_post and
  the projection, as MaskCLIP's implementation does (the last block attends each token to itself
  only, so a patch keeps its own content instead of the image's global summary);
- "sclip" (SCLIP, Wang et al. 2023, correlative self-attention): the last block's attention
  weights replaced by softmax(q q^T / sqrt(d)) + softmax(k k^T / sqrt(d)) per head (tokens
  attend to tokens like themselves), then out-projection, residual, MLP, ln_post, projection.
A ResNet tower's tokens already are its attention pool's per-position value path (MaskCLIP's
RN50 formulation, `models.resnet`), so "tokens" and "maskclip" coincide there and "sclip"
(defined for ViT blocks) is an error. The ViT's public pieces are used (patchify, its
parameters, `encoder`, `ln_post`); scanned and unrolled encoders both work.
"""

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from vlmjax.errors import ConfigError
from vlmjax.models import layers
from vlmjax.models.embedding import l2_normalize
from vlmjax.models.resnet import ModifiedResNet
from vlmjax.models.vit import VisionTransformer

DENSE_METHODS = ("tokens", "maskclip", "sclip")


def encoder_layers(encoder: layers.Encoder) -> list[layers.Block]:
    """The blocks of an Encoder in order; a scanned stack is indexed layer by layer."""
    if not encoder.scan:
        return list(encoder.layers)
    graphdef, state = nnx.split(encoder.block)
    depth = jax.tree.leaves(state)[0].shape[0]
    return [nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], state)) for i in range(depth)]


def vit_embed(vit: VisionTransformer, images: jax.Array) -> jax.Array:
    """The encoder's input: patch embeddings + positions (+ class token), ln_pre: [b, n (+1), d].

    `VisionTransformer.encode_tokens` without the encoder (evaluation: no patch masking).
    """
    dt = vit.dtype
    patches = vit.patchify(images.astype(dt))
    kernel = vit.patch_embed[...].astype(dt)
    x = jnp.einsum("bnpqc,pqcd->bnd", patches, kernel) + vit.patch_bias[...].astype(dt)
    pos = vit.pos_embed[...].astype(dt)
    if vit.cfg.pool == "cls":
        x = x + pos[1:]
        cls = jnp.broadcast_to(vit.cls_token[...].astype(dt) + pos[0], (x.shape[0], 1, x.shape[-1]))
        x = jnp.concatenate([cls, x], axis=1)
    else:
        x = x + pos
    return x if vit.ln_pre is None else vit.ln_pre(x)


def _heads(attn: layers.Attention, h: jax.Array, name: str) -> jax.Array:
    """The `name` projection ("query", "key", "value") of h [b, t, d]: [b, t, heads, head_dim]."""
    dt = h.dtype
    kernel, bias = getattr(attn, name)[...].astype(dt), getattr(attn, f"{name}_bias")[...].astype(dt)
    return jnp.einsum("btd,dnh->btnh", h, kernel) + bias


def _out(attn: layers.Attention, o: jax.Array) -> jax.Array:
    dt = o.dtype
    return jnp.einsum("btnh,nhd->btd", o, attn.out[...].astype(dt)) + attn.out_bias[...].astype(dt)


def value_path(attn: layers.Attention, h: jax.Array) -> jax.Array:
    """MaskCLIP: the attention with every token attending to itself, out(value(h))."""
    return _out(attn, _heads(attn, h, "value"))


def correlative_attention(attn: layers.Attention, h: jax.Array) -> jax.Array:
    """SCLIP: softmax(q q^T s) + softmax(k k^T s) (s = 1/sqrt(head_dim)) applied to the values."""
    q, k, v = (_heads(attn, h, n) for n in ("query", "key", "value"))
    scale = 1.0 / math.sqrt(q.shape[-1])

    def self_similarity(x: jax.Array) -> jax.Array:
        scores = jnp.einsum("btnh,bsnh->bnts", x, x).astype(jnp.float32) * scale
        return jax.nn.softmax(scores, axis=-1)

    weights = (self_similarity(q) + self_similarity(k)).astype(v.dtype)
    return _out(attn, jnp.einsum("bnts,bsnh->btnh", weights, v))


def last_block(block: layers.Block, x: jax.Array, method: str) -> jax.Array:
    """The last encoder block with its attention replaced per `method` (residual and MLP kept)."""
    h = block.ln_attn(x)
    attended = value_path(block.attn, h) if method == "maskclip" else correlative_attention(
        block.attn, h)
    x = x + attended
    return x + block.mlp(block.ln_mlp(x))


def _grid(tokens: jax.Array) -> jax.Array:
    """[b, n, e] with n = g * g in row-major order -> [b, g, g, e]."""
    b, n, e = tokens.shape
    g = math.isqrt(n)
    if g * g != n:
        raise ValueError(f"{n} tokens are not a square grid")
    return tokens.reshape(b, g, g, e)


def check_dense_method(model: Any, method: str) -> None:
    """ConfigError (one line, before anything compiles) unless `model` can give `method`."""
    if method not in DENSE_METHODS:
        raise ConfigError(f"dense method {method!r} is unknown; choose one of "
                          f"{', '.join(DENSE_METHODS)}")
    tower = getattr(model, "image", None)
    if not hasattr(model, "encode_image_tokens") or tower is None:
        raise ConfigError(f"dense method {method!r} needs a model with image tokens (model.name "
                          f"two_tower, filip or patch_phrase), not {type(model).__name__}")
    if method == "sclip" and not isinstance(tower, VisionTransformer):
        raise ConfigError(f"dense method 'sclip' rewrites a ViT's last attention block; the image "
                          f"tower is {type(tower).__name__}: use method 'tokens' or 'maskclip'")
    if method != "tokens" and not isinstance(tower, VisionTransformer | ModifiedResNet):
        raise ConfigError(f"dense method {method!r} knows ViT and ResNet towers, not "
                          f"{type(tower).__name__}; use method 'tokens'")


def dense_embeddings(model: Any, images: jax.Array, method: str = "tokens",
                     normalize: bool = True) -> jax.Array:
    """Normalised images [b, H, W, c] -> joint-space embeddings [b, h, w, e] of every patch
    (module doc), L2-normalised unless `normalize` is False (then a patch's norm is its weight
    in an average-pooled image embedding); `model`: a family with an image tower and
    `image_proj`."""
    check_dense_method(model, method)
    tower = model.image
    if method == "tokens" or isinstance(tower, ModifiedResNet):
        if not normalize:
            return _grid(model.image_proj(tower(images)["tokens"]).astype(jnp.float32))
        return _grid(model.encode_image_tokens(images))
    x = vit_embed(tower, images)
    blocks = encoder_layers(tower.encoder)
    for block in blocks[:-1]:
        x = block(x)
    x = tower.ln_post(last_block(blocks[-1], x, method))
    tokens = model.image_proj(x[:, 1:] if tower.cfg.pool == "cls" else x).astype(jnp.float32)
    return _grid(l2_normalize(tokens) if normalize else tokens)
