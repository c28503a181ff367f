"""Text transformer tower: token + learned position embeddings, encoder, ln_final, pooling.

Pooling (`model.text.pool`):
- "eot" (CLIP): the last real token of the explicit padding mask (CLIP's argmax-of-ids rule
  gives the same position for CLIP BPE, whose EOT id is the largest, but fails for other
  tokenizers or pad ids);
- "last" (big_vision SigLIP): the last position of the padded sequence, whatever the mask; its
  tokenizer pads with EOS, and with causal=False every position attends to every other,
  padding included (big_vision's text_transformer has no attention mask);
- "cls" (CoCa's unimodal text decoder): a learned CLS token appended after the last position,
  without a position embedding; `cls_mask` "real_tokens" lets it attend to the real tokens and
  itself, "open_clip" reproduces open_clip's CoCa mask, shifted by one position (the real
  tokens and the first padding position, not itself, unless no padding is left).
The padding mask reaches the attention where it changes real tokens: a bidirectional encoder
pooled at "eot" masks padding keys; a causal one needs no mask (real tokens never see later
positions), which also keeps the padding positions equal to open_clip's and HF's.
"""

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from vlmjax.models import layers
from vlmjax.models.tower import TowerSettings, TowerSpec
from vlmjax.options import require_choice, require_divides, require_positive
from vlmjax.parallel.logical import constrain

POOLS = ("eot", "last", "cls")
CLS_MASKS = ("real_tokens", "open_clip")
OPTIONS = {
    "width": 512,
    "depth": 12,
    "heads": 8,
    "mlp_dim": 2048,
    "causal": True,
    "pool": "eot",  # eot | last | cls
    "cls_mask": "real_tokens",  # pool="cls" only: real_tokens | open_clip
}


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
    pool: str = "eot"
    cls_mask: str = "real_tokens"

    @classmethod
    def from_config(cls, text: Mapping, vocab_size: int, context_length: int) -> "TextConfig":
        return cls(vocab_size=vocab_size, context_length=context_length,
                   **{k: text[k] for k in OPTIONS})


def last_valid_index(mask: jax.Array) -> jax.Array:
    """Index of the last True in each row of a [b, L] right-padded mask (0 for empty rows)."""
    return jnp.maximum(mask.astype(jnp.int32).sum(axis=-1) - 1, 0)


class TextTransformer(nnx.Module):
    """Token + position embeddings, pre-LN encoder, ln_final and pooling (module doc)."""

    def __init__(self, cfg: TextConfig, settings: TowerSettings, *, rngs: nnx.Rngs):
        if cfg.pool not in POOLS or cfg.cls_mask not in CLS_MASKS:
            raise ValueError(f"text pool must be one of {POOLS} and cls_mask one of {CLS_MASKS}")
        self.cfg, self.width = cfg, cfg.width
        self.dtype = settings.compute_dtype
        w = cfg.width
        self.token_embed = layers.param(rngs, layers.normal(0.02), (cfg.vocab_size, w),
                                        ("vocab", "embed"))
        self.pos_embed = layers.param(rngs, layers.normal(0.01), (cfg.context_length, w),
                                      (None, "embed"))
        if cfg.pool == "cls":
            self.cls_token = layers.param(rngs, layers.normal(0.01), (w,), ("embed",))
        self.encoder = layers.Encoder(w, cfg.depth, cfg.heads, cfg.mlp_dim, settings.activation,
                                      rngs=rngs, remat=settings.remat, scan=settings.scan_layers,
                                      norm_eps=settings.norm_eps)
        self.ln_final = layers.LayerNorm(w, rngs=rngs, eps=settings.norm_eps)

    def embed_tokens(self, ids: jax.Array) -> jax.Array:
        """Token embeddings [b, L, d] of ids [b, L] (prompt learning replaces some of them)."""
        return jnp.take(self.token_embed[...], ids, axis=0)

    def _key_mask(self, mask: jax.Array) -> jax.Array | None:
        """The attention's key mask [b, L (+1)], or None where padding needs no masking."""
        real = mask.astype(bool)
        if self.cfg.pool == "cls":
            ones = jnp.ones((mask.shape[0], 1), bool)
            return jnp.concatenate([real, ones] if self.cfg.cls_mask == "real_tokens"
                                   else [ones, real], axis=1)
        if self.cfg.causal or self.cfg.pool == "last":
            return None
        return real

    def __call__(self, ids: jax.Array, mask: jax.Array, *, token_embeds: jax.Array | None = None,
                 train: bool = False, rng: jax.Array | None = None) -> dict[str, jax.Array]:
        """ids, mask: [b, L] -> {"pooled": [b, d], "tokens": [b, L, d], "mask": [b, L]}.

        `token_embeds` [b, L, d] replaces the embedding lookup of `ids` (prompt learning feeds
        learned context vectors through it); pooling still reads the mask.
        """
        del train, rng  # no stochastic layers
        dt = self.dtype
        x = (self.embed_tokens(ids) if token_embeds is None else token_embeds).astype(dt)
        x = x + self.pos_embed[...][: ids.shape[1]].astype(dt)
        if self.cfg.pool == "cls":
            cls = jnp.broadcast_to(self.cls_token[...].astype(dt), (x.shape[0], 1, x.shape[-1]))
            x = jnp.concatenate([x, cls], axis=1)
        x = constrain(x, ("batch", "length", "embed"))
        x = self.encoder(x, causal=self.cfg.causal, mask=self._key_mask(mask))
        if self.cfg.pool == "cls":
            # CoCa: only the CLS is normalised; the decoder reads the un-normalised states.
            return {"pooled": self.ln_final(x[:, -1]), "tokens": x[:, :-1], "mask": mask}
        x = self.ln_final(x)
        if self.cfg.pool == "last":
            pooled = x[:, -1]
        else:
            pooled = jnp.take_along_axis(x, last_valid_index(mask)[:, None, None], axis=1)[:, 0]
        return {"pooled": pooled, "tokens": x, "mask": mask}


def check_text_transformer(cfg: Mapping, prefix: str) -> None:
    text = cfg["model"]["text"]
    require_positive(text, prefix, "width", "depth", "heads", "mlp_dim")
    require_divides(text, prefix, "heads", "width")
    require_choice(text, prefix, "pool", POOLS)
    require_choice(text, prefix, "cls_mask", CLS_MASKS)


def build_text_transformer(section: Mapping, settings: TowerSettings, *,
                           rngs: nnx.Rngs) -> TextTransformer:
    return TextTransformer(TextConfig.from_config(section, settings.vocab_size,
                                                  settings.context_length), settings, rngs=rngs)


TRANSFORMER = TowerSpec(build=build_text_transformer, options=OPTIONS,
                        check=check_text_transformer, width=lambda section: section["width"])
