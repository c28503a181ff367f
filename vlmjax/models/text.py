"""Causal text transformer tower pooled at the end-of-text token (the last real token)."""

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from vlmjax.models import layers
from vlmjax.parallel.logical import constrain


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """Sizes of the text tower; vocabulary and context come from the tokenizer."""

    vocab_size: int
    context_length: int
    width: int
    depth: int
    heads: int
    mlp_dim: int

    @classmethod
    def from_config(cls, text: Mapping, vocab_size: int, context_length: int) -> "TextConfig":
        return cls(vocab_size=vocab_size, context_length=context_length, width=text["width"],
                   depth=text["depth"], heads=text["heads"], mlp_dim=text["mlp_dim"])


def last_valid_index(mask: jax.Array) -> jax.Array:
    """Index of the last True in each row of a [b, L] right-padded mask (0 for empty rows)."""
    return jnp.maximum(mask.astype(jnp.int32).sum(axis=-1) - 1, 0)


class TextTransformer(nnx.Module):
    """Token + position embeddings, causal encoder, ln_final, EOT pooling, projection.

    Pooling reads the position of the last real token from the explicit padding mask (CLIP's
    argmax-of-ids rule gives the same position for CLIP BPE, whose EOT id is the largest, but
    fails for other tokenizers or pad ids). Causal attention means real tokens never attend to
    padding, so the mask is not needed inside the encoder.
    """

    def __init__(self, cfg: TextConfig, embed_dim: int, activation: str, *, rngs: nnx.Rngs,
                 remat: str = "none", scan_layers: bool = False):
        self.cfg = cfg
        w = cfg.width
        self.token_embed = layers.param(rngs, layers.normal(0.02), (cfg.vocab_size, w),
                                        ("vocab", "embed"))
        self.pos_embed = layers.param(rngs, layers.normal(0.01), (cfg.context_length, w),
                                      (None, "embed"))
        self.encoder = layers.Encoder(w, cfg.depth, cfg.heads, cfg.mlp_dim, activation, rngs=rngs,
                                      remat=remat, scan=scan_layers)
        self.ln_final = layers.LayerNorm(w, rngs=rngs)
        self.proj = layers.param(rngs, layers.normal(w ** -0.5), (w, embed_dim), ("embed", "joint"))

    def __call__(self, ids: jax.Array, mask: jax.Array, dtype: jnp.dtype = jnp.float32,
                 token_embeds: jax.Array | None = None) -> dict[str, jax.Array]:
        """ids, mask: [b, L] -> {"embedding": [b, e], "tokens": [b, L, d]}.

        `token_embeds` [b, L, d] replaces the embedding lookup of `ids` (prompt learning feeds
        learned context vectors through it); pooling still reads the mask.
        """
        x = (jnp.take(self.token_embed[...], ids, axis=0) if token_embeds is None
             else token_embeds).astype(dtype)
        x = x + self.pos_embed[...][: ids.shape[1]].astype(dtype)
        x = constrain(x, ("batch", "length", "embed"))
        x = self.ln_final(self.encoder(x, causal=True))
        pooled = jnp.take_along_axis(x, last_valid_index(mask)[:, None, None], axis=1)[:, 0]
        embedding = jnp.einsum("bd,de->be", pooled, self.proj[...].astype(dtype))
        return {"embedding": embedding, "tokens": x}
