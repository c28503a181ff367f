"""Text transformer tower: causal and pooled at the end-of-text token (CLIP), or bidirectional
and pooled at the last position (big_vision SigLIP)."""

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from vlmjax.models import layers, projection
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
    causal: bool = True
    pool: str = "eot"  # POOLS
    proj: str = "linear"  # projection.KINDS

    @classmethod
    def from_config(cls, text: Mapping, vocab_size: int, context_length: int) -> "TextConfig":
        return cls(vocab_size=vocab_size, context_length=context_length,
                   **{k: text[k] for k in ("width", "depth", "heads", "mlp_dim", "causal", "pool",
                                           "proj")})


POOLS = ("eot", "last")


def last_valid_index(mask: jax.Array) -> jax.Array:
    """Index of the last True in each row of a [b, L] right-padded mask (0 for empty rows)."""
    return jnp.maximum(mask.astype(jnp.int32).sum(axis=-1) - 1, 0)


class TextTransformer(nnx.Module):
    """Token + position embeddings, encoder, ln_final, pooling, projection.

    pool="eot" reads the position of the last real token from the explicit padding mask (CLIP's
    argmax-of-ids rule gives the same position for CLIP BPE, whose EOT id is the largest, but
    fails for other tokenizers or pad ids); with causal attention real tokens never attend to
    padding, so the mask is not needed inside the encoder. pool="last" takes the last position
    of the sequence whatever the mask, and with causal=False every position attends to every
    other, padding included (big_vision's text_transformer: no attention mask, padding ids are
    inputs like any other; its tokenizer pads with EOS so the last position is an EOS).
    """

    def __init__(self, cfg: TextConfig, embed_dim: int, activation: str, *, rngs: nnx.Rngs,
                 remat: str = "none", scan_layers: bool = False, norm_eps: float = 1e-5):
        if cfg.pool not in POOLS:
            raise ValueError(f"text pool must be one of {POOLS}, got {cfg.pool!r}")
        self.cfg = cfg
        w = cfg.width
        self.token_embed = layers.param(rngs, layers.normal(0.02), (cfg.vocab_size, w),
                                        ("vocab", "embed"))
        self.pos_embed = layers.param(rngs, layers.normal(0.01), (cfg.context_length, w),
                                      (None, "embed"))
        self.encoder = layers.Encoder(w, cfg.depth, cfg.heads, cfg.mlp_dim, activation, rngs=rngs,
                                      remat=remat, scan=scan_layers, norm_eps=norm_eps)
        self.ln_final = layers.LayerNorm(w, rngs=rngs, eps=norm_eps)
        projection.add_projection(self, cfg.proj, w, embed_dim, rngs)

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
        x = self.ln_final(self.encoder(x, causal=self.cfg.causal))
        if self.cfg.pool == "last":
            pooled = x[:, -1]
        else:
            pooled = jnp.take_along_axis(x, last_valid_index(mask)[:, None, None], axis=1)[:, 0]
        return {"embedding": projection.project(self, self.cfg.proj, pooled), "tokens": x}
