"""CoCa's multimodal text decoder: cross-attention to the image's caption tokens, vocabulary head.

It reads the unimodal text tower's token states (a text transformer with pool="cls",
`models.text`). Its blocks are the paper's (block="paper": self-attention, cross-attention,
MLP) or open_clip's (block="open_clip": self-attention, MLP, cross-attention, MLP: a full
transformer block followed by a full cross-attention block).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from vlmjax.models import layers, stacked
from vlmjax.parallel.logical import constrain

BLOCKS = ("paper", "open_clip")


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
        if self.self_mlp is None:
            return x
        return x + self.self_mlp(self.ln_self_mlp(x))

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
        # btd,dv->btv as one 2-D matmul: as an einsum, XLA:CPU copied the [rows, vocab] logit
        # gradient transposed before the head's weight gradient (15% of the demo CoCa step).
        logits = layers.dense(x, self.head[...].astype(x.dtype))
        return constrain(logits.astype(jnp.float32), ("batch", "length", "vocab"))
