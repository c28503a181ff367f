"""CoCa's text decoder: unimodal causal layers with an appended CLS token, then multimodal layers.

The unimodal half embeds tokens (learned positions) and runs causal self-attention over
[tokens, CLS]; the CLS is appended after the last position of the (right-padded) sequence and
has no position embedding. With cls_mask="real_tokens" it attends to real tokens and itself
(padding keys are masked), so neither the padding ids nor the amount of padding change the text
embedding. cls_mask="open_clip" reproduces open_clip's CoCa, whose key mask is shifted by one
position: the CLS attends to the real tokens and the first padding position but not to itself
(itself too when no padding is left). open_clip derives that mask from `ids != pad_id`, this
model from the explicit mask: the two differ only for captions containing the pad id as a real
token (id 0, "!" inside a word, for CLIP BPE).
The multimodal half adds cross-attention to the image's caption tokens and ends in an untied
vocabulary head. Its blocks are the paper's (block="paper": self-attention, cross-attention,
MLP) or open_clip's (block="open_clip": self-attention, MLP, cross-attention, MLP: a full
transformer block followed by a full cross-attention block).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from vlmjax.models import layers, stacked
from vlmjax.parallel.logical import constrain

CLS_MASKS = ("real_tokens", "open_clip")
BLOCKS = ("paper", "open_clip")


class UnimodalDecoder(nnx.Module):
    """Token + position embeddings, causal layers over [tokens, CLS], CLS -> ln -> projection."""

    def __init__(self, vocab_size: int, context_length: int, width: int, depth: int, heads: int,
                 mlp_dim: int, embed_dim: int, activation: str, *, rngs: nnx.Rngs,
                 remat: str = "none", scan_layers: bool = False, cls_mask: str = "real_tokens"):
        if cls_mask not in CLS_MASKS:
            raise ValueError(f"cls_mask must be one of {CLS_MASKS}, got {cls_mask!r}")
        self.cls_mask = cls_mask
        self.token_embed = layers.param(rngs, layers.normal(0.02), (vocab_size, width),
                                        ("vocab", "embed"))
        self.pos_embed = layers.param(rngs, layers.normal(0.01), (context_length, width),
                                      (None, "embed"))
        self.cls_token = layers.param(rngs, layers.normal(0.01), (width,), ("embed",))
        self.encoder = layers.Encoder(width, depth, heads, mlp_dim, activation, rngs=rngs,
                                      remat=remat, scan=scan_layers)
        self.ln_final = layers.LayerNorm(width, rngs=rngs)
        self.proj = layers.param(rngs, layers.normal(width ** -0.5), (width, embed_dim),
                                 ("embed", "joint"))

    def tokens(self, ids: jax.Array, dtype: jnp.dtype = jnp.float32) -> jax.Array:
        """ids [b, L] -> unimodal token states [b, L, d] (no CLS: causal, so identical)."""
        return self.encoder(self._embed(ids, dtype), causal=True)

    def _embed(self, ids: jax.Array, dtype: jnp.dtype, token_embeds: jax.Array | None = None
               ) -> jax.Array:
        x = (jnp.take(self.token_embed[...], ids, axis=0) if token_embeds is None
             else token_embeds).astype(dtype)
        x = x + self.pos_embed[...][: ids.shape[1]].astype(dtype)
        return constrain(x, ("batch", "length", "embed"))

    def __call__(self, ids: jax.Array, mask: jax.Array, dtype: jnp.dtype = jnp.float32,
                 token_embeds: jax.Array | None = None) -> dict[str, jax.Array]:
        """ids, mask [b, L] -> {"embedding": [b, e] from the CLS, "tokens": [b, L, d]};
        `token_embeds` [b, L, d] replaces the lookup of `ids` (prompt learning)."""
        x = self._embed(ids, dtype, token_embeds)
        cls = jnp.broadcast_to(self.cls_token[...].astype(dtype), (x.shape[0], 1, x.shape[-1]))
        x = jnp.concatenate([x, cls], axis=1)
        ones, real = jnp.ones((mask.shape[0], 1), bool), mask.astype(bool)
        keys = jnp.concatenate([real, ones] if self.cls_mask == "real_tokens" else [ones, real],
                               axis=1)
        x = self.encoder(x, causal=True, mask=keys)
        pooled = self.ln_final(x[:, -1])
        embedding = jnp.einsum("bd,de->be", pooled, self.proj[...].astype(dtype))
        return {"embedding": embedding, "tokens": x[:, :-1]}


class CrossBlock(nnx.Module):
    """Pre-LN decoder block: causal self-attention, [MLP (block="open_clip")], cross-attention
    to image tokens, MLP."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, activation: str, *, rngs: nnx.Rngs,
                 block: str = "paper"):
        if block not in BLOCKS:
            raise ValueError(f"block must be one of {BLOCKS}, got {block!r}")
        self.ln_self = layers.LayerNorm(dim, rngs=rngs)
        self.self_attn = layers.Attention(dim, heads, rngs=rngs)
        if block == "open_clip":  # open_clip's resblocks[i].ln_2 / .mlp
            self.ln_self_mlp = layers.LayerNorm(dim, rngs=rngs)
            self.self_mlp = layers.Mlp(dim, mlp_dim, activation, rngs=rngs)
        else:
            self.ln_self_mlp = self.self_mlp = None
        self.ln_cross = layers.LayerNorm(dim, rngs=rngs)
        self.ln_image = layers.LayerNorm(dim, rngs=rngs)  # open_clip's ln_1_kv
        self.cross_attn = layers.Attention(dim, heads, rngs=rngs)
        self.ln_mlp = layers.LayerNorm(dim, rngs=rngs)
        self.mlp = layers.Mlp(dim, mlp_dim, activation, rngs=rngs)

    def after_self_attention(self, x: jax.Array) -> jax.Array:
        """The MLP sub-block between self- and cross-attention (block="open_clip"), else x."""
        return x if self.self_mlp is None else x + self.self_mlp(self.ln_self_mlp(x))

    def __call__(self, x: jax.Array, image: jax.Array) -> jax.Array:
        """x: [b, t, d] text states; image: [b, s, d] caption tokens of the image."""
        x = self.after_self_attention(x + self.self_attn(self.ln_self(x), causal=True))
        x = x + self.cross_attn(self.ln_cross(x), self.ln_image(image))
        x = x + self.mlp(self.ln_mlp(x))
        return constrain(x, ("batch", "length", "embed"))


class MultimodalDecoder(nnx.Module):
    """`depth` CrossBlocks (unrolled `layers/<i>` or scanned `block`), ln, untied vocab head."""

    def __init__(self, vocab_size: int, width: int, depth: int, heads: int, mlp_dim: int,
                 activation: str, *, rngs: nnx.Rngs, remat: str = "none", scan: bool = False,
                 block: str = "paper"):
        stacked.remat_policy(remat)  # fail at build time on an unknown policy
        self.remat = remat
        self.scan = scan
        make: Callable[[nnx.Rngs], CrossBlock] = lambda r: CrossBlock(  # noqa: E731
            width, heads, mlp_dim, activation, rngs=r, block=block)
        if scan:
            self.block = stacked.create_stacked(make, depth, rngs)
        else:
            self.layers = nnx.List([make(rngs) for _ in range(depth)])
        self.ln_final = layers.LayerNorm(width, rngs=rngs)
        self.head = layers.param(rngs, layers.normal(width ** -0.5), (width, vocab_size),
                                 ("embed", "vocab"))

    def __call__(self, tokens: jax.Array, image: jax.Array) -> jax.Array:
        """tokens: [b, L, d] unimodal states; image: [b, s, d] -> float32 logits [b, L, vocab]."""
        def call(layer: CrossBlock, h: jax.Array, kv: jax.Array) -> jax.Array:
            return layer(h, kv)

        blocks = self.block if self.scan else self.layers
        x = stacked.apply_layers(blocks, tokens, call, image.astype(tokens.dtype), remat=self.remat,
                                 scanned=self.scan)
        x = self.ln_final(x)
        logits = jnp.einsum("btd,dv->btv", x, self.head[...].astype(x.dtype))
        return constrain(logits.astype(jnp.float32), ("batch", "length", "vocab"))
