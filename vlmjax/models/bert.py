"""BERT text tower (Devlin et al. 2019; the layout of transformers' BertModel): LiT's strongest
text towers.

Word + learned position + token-type embeddings (type 0 for every token: one segment), a
LayerNorm, then post-LN blocks: h = LN(h + attention(h)), h = LN(h + mlp(h)), bidirectional with
the padding keys masked. "pooled" is the first position ([CLS] of a WordPiece tokenizer),
optionally through BERT's pooler (dense + tanh, `pooler=True`); "tokens" are the final hidden
states. The family's projection (`model.text.proj`, linear or linear_bias) maps it to the joint
space. Prompt learning (CoOp) replaces word embeddings through `token_embeds`; position and type
embeddings are still added.
"""

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from vlmjax.errors import ConfigError
from vlmjax.models import layers, stacked
from vlmjax.models.tower import TowerSettings, TowerSpec
from vlmjax.options import fail, require_choice, require_divides, require_positive
from vlmjax.parallel.logical import constrain

OPTIONS = {  # BERT-base by default
    "width": 768,
    "depth": 12,
    "heads": 12,
    "mlp_dim": 3072,
    "max_positions": 512,  # position embedding rows (>= tokenizer.context_length)
    "type_vocab_size": 2,
    "pooler": False,  # [CLS] through BERT's pooler (dense + tanh)
    "hidden_act": "gelu",  # exact erf GELU (BERT's "gelu"); gelu_tanh for "gelu_new"
    "ln_eps": 1e-12,
    "vocab_size": 0,  # embedding rows; 0: the tokenizer's; an imported BERT records its own
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    context_length: int
    width: int
    depth: int
    heads: int
    mlp_dim: int
    max_positions: int = 512
    type_vocab_size: int = 2
    pooler: bool = False
    hidden_act: str = "gelu"
    ln_eps: float = 1e-12

    @classmethod
    def from_config(cls, text: Mapping, vocab_size: int, context_length: int) -> "BertConfig":
        declared = text.get("vocab_size", 0)
        if declared and vocab_size and declared != vocab_size:
            raise ConfigError(f"config.model.text.vocab_size={declared} (BERT's word embedding "
                              f"rows) does not match the tokenizer's {vocab_size} tokens; use the "
                              "checkpoint's own tokenizer files, or 0 to size it by the tokenizer")
        fields = {f.name for f in dataclasses.fields(cls)} - {"vocab_size", "context_length"}
        return cls(vocab_size=vocab_size or declared, context_length=context_length,
                   **{k: text[k] for k in fields})


class PostLNBlock(nnx.Module):
    """BERT's layer: h = LN(h + attn(h)); h = LN(h + mlp(h))."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.attn = layers.Attention(cfg.width, cfg.heads, rngs=rngs)
        self.ln_attn = layers.LayerNorm(cfg.width, rngs=rngs, eps=cfg.ln_eps)
        self.mlp = layers.Mlp(cfg.width, cfg.mlp_dim, cfg.hidden_act, rngs=rngs)
        self.ln_mlp = layers.LayerNorm(cfg.width, rngs=rngs, eps=cfg.ln_eps)

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        x = self.ln_attn(x + self.attn(x, mask=mask))
        x = self.ln_mlp(x + self.mlp(x))
        return constrain(x, ("batch", "length", "embed"))


class Bert(nnx.Module):
    """Embeddings, post-LN encoder and [CLS] pooling (module doc)."""

    def __init__(self, cfg: BertConfig, settings: TowerSettings, *, rngs: nnx.Rngs):
        if cfg.hidden_act not in layers.ACTIVATIONS:
            raise ValueError(f"hidden_act must be one of {tuple(layers.ACTIVATIONS)}")
        w = cfg.width
        self.cfg, self.width = cfg, w
        self.dtype = settings.compute_dtype
        self.remat, self.scan = settings.remat, settings.scan_layers
        stacked.remat_policy(settings.remat)
        init = layers.normal(0.02)  # BERT's initializer_range
        self.token_embed = layers.param(rngs, init, (cfg.vocab_size, w), ("vocab", "embed"))
        self.pos_embed = layers.param(rngs, init, (cfg.max_positions, w), (None, "embed"))
        self.type_embed = layers.param(rngs, init, (cfg.type_vocab_size, w), (None, "embed"))
        self.ln_embed = layers.LayerNorm(w, rngs=rngs, eps=cfg.ln_eps)

        def make(block_rngs: nnx.Rngs) -> PostLNBlock:
            return PostLNBlock(cfg, rngs=block_rngs)

        if self.scan:
            self.block = stacked.create_stacked(make, cfg.depth, rngs)
        else:
            self.layers = nnx.List([make(rngs) for _ in range(cfg.depth)])
        if cfg.pooler:
            self.pooler = layers.param(rngs, init, (w, w), ("embed", "mlp"))
            self.pooler_bias = layers.param(rngs, layers.zeros, (w,), ("mlp",))

    def embed_tokens(self, ids: jax.Array) -> jax.Array:
        """Word embeddings [b, L, d] of ids [b, L] (prompt learning replaces some of them)."""
        return jnp.take(self.token_embed[...], ids, axis=0)

    def __call__(self, ids: jax.Array, mask: jax.Array, *, token_embeds: jax.Array | None = None,
                 train: bool = False, rng: jax.Array | None = None) -> dict[str, jax.Array]:
        """ids, mask: [b, L] -> {"pooled": [b, d], "tokens": [b, L, d], "mask": [b, L]}."""
        del train, rng  # no dropout
        dt = self.dtype
        x = (self.embed_tokens(ids) if token_embeds is None else token_embeds).astype(dt)
        x = x + self.pos_embed[...][: ids.shape[1]].astype(dt) + self.type_embed[...][0].astype(dt)
        x = constrain(self.ln_embed(x), ("batch", "length", "embed"))

        def call(block: PostLNBlock, h: jax.Array, key_mask: jax.Array) -> jax.Array:
            return block(h, key_mask)

        x = stacked.apply_layers(self.block if self.scan else self.layers, x, call,
                                 mask.astype(bool), remat=self.remat, scanned=self.scan)
        pooled = x[:, 0]
        if self.cfg.pooler:
            pooled = jnp.tanh(pooled @ self.pooler[...].astype(dt) + self.pooler_bias[...].astype(dt))
        return {"pooled": pooled, "tokens": x, "mask": mask}


def check_bert(cfg: Mapping, prefix: str) -> None:
    """Positive sizes, heads dividing the width, the context fitting the position table."""
    text = cfg["model"]["text"]
    require_positive(text, prefix, "width", "depth", "heads", "mlp_dim", "max_positions",
                     "type_vocab_size", "ln_eps")
    require_divides(text, prefix, "heads", "width")
    require_choice(text, prefix, "hidden_act", layers.ACTIVATIONS)
    if text["vocab_size"] < 0:
        fail(f"{prefix}.vocab_size", f"is {text['vocab_size']}", "use 0 (the tokenizer's size) "
             "or the checkpoint's vocabulary size")
    context = cfg["tokenizer"]["context_length"]
    if context > text["max_positions"]:
        fail("tokenizer.context_length", f"({context}) exceeds {prefix}.max_positions "
             f"({text['max_positions']}), BERT's position embeddings",
             "use a shorter context or more positions")


def build_bert(section: Mapping, settings: TowerSettings, *, rngs: nnx.Rngs) -> Bert:
    return Bert(BertConfig.from_config(section, settings.vocab_size, settings.context_length),
                settings, rngs=rngs)


BERT = TowerSpec(build=build_bert, options=OPTIONS, check=check_bert,
                 width=lambda section: section["width"])
