"""CoCa (Yu et al. 2022): contrastive image/text embeddings plus an image-conditioned captioner.

Parameters: `image` (the image tower built without its head: its trunk's tokens),
`image_head` (attentional poolers + projection), `text` (the unimodal text tower: a text
transformer with an appended CLS, `model.text.pool="cls"`), `text_proj`, `decoder` (multimodal
layers + untied vocabulary head), `logit_scale`.

Pooler layouts (`model.coca.pooler`):
- "paper" (default; open_clip's attentional_pool="parallel"): LayerNorm on the ViT tokens, then
  a `caption_queries`-query pooler (width = text width) whose outputs the decoder cross-attends
  to, and a separate 1-query pooler (width = embed_dim) whose output, projected, is the image
  embedding.
- "open_clip" (open_clip's default CoCa): ONE pooler with `caption_queries` queries (width =
  text width) on the raw ViT tokens, LayerNorm on its outputs; output 0, projected, is the image
  embedding and outputs 1.. (caption_queries - 1 of them) feed the decoder.
Poolers LayerNorm their queries and keys (open_clip's AttentionalPooler). With image.pool="cls"
the class token is among the pooled tokens (as in open_clip); "gap" has no class token.
open_clip's text-side variants (`model.text.cls_mask`, `model.coca.decoder_block`, see
models/text.py and text_decoder.py) complete the open_clip layout; `python -m vlmjax.convert
--from open_clip` sets all three.

API (for zero-shot evaluation and, later, KV-cache generation; images are normalised floats):
- `encode_image(images) -> image_embed [b, e]` and `encode_text(ids, mask) -> text_embed [b, e]`,
  L2-normalised float32, as TwoTower (so the zero-shot evaluator works unchanged);
- `image_features(images) -> (image_embed, caption_tokens [b, q, d])`;
- `decode(caption_tokens, ids, mask) -> logits [b, L, vocab]` (float32); logits[:, i] predicts
  ids[:, i + 1]. Every attention is a `layers.Attention` (causal self-attention in
  `text.encoder` and `decoder.*.self_attn`, cross-attention in `decoder.*.cross_attn`), so a
  cached variant can replace them.
"""

from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from vlmjax.models import layers
from vlmjax.models.embedding import l2_normalize
from vlmjax.models.projection import side_projection
from vlmjax.models.text_decoder import BLOCKS, MultimodalDecoder
from vlmjax.models.tower import TowerSettings
from vlmjax.models.towers import build_tower, tower_width
from vlmjax.models.two_tower import scalar, tower_rngs
from vlmjax.options import fail, require_choice, require_positive

POOLERS = ("paper", "open_clip")
OPTIONS = {"coca": {
    "pooler": "paper",  # paper (caption + contrastive poolers) | open_clip (one pooler)
    "caption_queries": 256,  # queries of the captioning pooler (open_clip: incl. the 1st)
    "pooler_heads": 8,
    "multimodal_depth": 6,  # the unimodal half is the text tower (model.text.depth)
    # paper (self-attn, cross-attn, MLP) | open_clip (self-attn, MLP, cross-attn, MLP)
    "decoder_block": "paper",
}}
# LiT: the image tower is the trunk (the poolers are trained, as in CoCa's frozen-feature
# evaluations); the text tower is the whole decoder.
COCA_TOWER_PATTERNS = {"image": r"^image/", "text": r"^(text|text_proj|decoder)/"}


class AttentionalPooler(nnx.Module):
    """Learned queries attend over the tokens (open_clip): attn(ln_q(queries), ln_k(tokens))."""

    def __init__(self, dim: int, kv_dim: int, heads: int, num_queries: int, *, rngs: nnx.Rngs):
        self.probe = layers.param(rngs, layers.normal(1.0), (num_queries, dim), (None, "embed"))
        self.ln_q = layers.LayerNorm(dim, rngs=rngs)
        self.ln_k = layers.LayerNorm(kv_dim, rngs=rngs)
        self.attn = layers.Attention(dim, heads, rngs=rngs, kv_dim=kv_dim)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [b, s, kv_dim] -> [b, num_queries, dim]."""
        q = self.ln_q(self.probe[...]).astype(x.dtype)
        q = jnp.broadcast_to(q, (x.shape[0], *q.shape))
        return self.attn(q, self.ln_k(x))


class ImageHead(nnx.Module):
    """Attentional poolers over ViT tokens -> (contrastive embedding, caption tokens)."""

    def __init__(self, layout: str, vit_width: int, text_width: int, embed_dim: int, heads: int,
                 caption_queries: int, *, rngs: nnx.Rngs):
        if layout not in POOLERS:
            raise ValueError(f"model.coca.pooler must be one of {POOLERS}, got {layout!r}")
        self.layout = layout
        if layout == "paper":
            self.ln_tokens = layers.LayerNorm(vit_width, rngs=rngs)
            self.caption_pool = AttentionalPooler(text_width, vit_width, heads, caption_queries,
                                                  rngs=rngs)
            self.contrastive_pool = AttentionalPooler(embed_dim, vit_width, heads, 1, rngs=rngs)
            pooled_dim = embed_dim
        else:
            self.pool = AttentionalPooler(text_width, vit_width, heads, caption_queries, rngs=rngs)
            self.ln_post = layers.LayerNorm(text_width, rngs=rngs)
            pooled_dim = text_width
        self.proj = layers.param(rngs, layers.normal(pooled_dim ** -0.5), (pooled_dim, embed_dim),
                                 ("embed", "joint"))

    def __call__(self, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
        """tokens: [b, s, w] -> (embedding [b, e], caption tokens [b, q, text width])."""
        if self.layout == "paper":
            x = self.ln_tokens(tokens)
            caption, pooled = self.caption_pool(x), self.contrastive_pool(x)[:, 0]
        else:
            x = self.ln_post(self.pool(tokens))
            pooled, caption = x[:, 0], x[:, 1:]
        embedding = jnp.einsum("bd,de->be", pooled, self.proj[...].astype(pooled.dtype))
        return embedding, caption


class CoCa(nnx.Module):
    """Image trunk + attentional poolers, unimodal text tower with CLS, multimodal captioner."""

    def __init__(self, model: Mapping, vocab_size: int, context_length: int, *, rngs: nnx.Rngs):
        coca, text = model["coca"], model["text"]
        settings = TowerSettings.from_model(model, vocab_size, context_length)
        self.dtype = settings.compute_dtype
        trunk = TowerSettings.from_model(model, vocab_size, context_length, head=False)
        self.image = build_tower(model, "image", trunk, rngs)
        self.image_head = ImageHead(coca["pooler"], tower_width(model, "image"), text["width"],
                                    model["embed_dim"], coca["pooler_heads"],
                                    coca["caption_queries"], rngs=rngs)
        self.text = build_tower(model, "text", settings, rngs)
        self.text_proj = side_projection(model, "text", self.text.width, rngs)
        self.decoder = MultimodalDecoder(vocab_size, text["width"], coca["multimodal_depth"],
                                         text["heads"], text["mlp_dim"], model["activation"],
                                         rngs=rngs, remat=model["remat"], scan=model["scan_layers"],
                                         block=coca["decoder_block"])
        self.logit_scale = scalar(rngs, model["logit_scale_init"])

    def image_features(self, images: jax.Array, *, train: bool = False,
                       rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """Images -> (L2-normalised embedding [b, e], caption tokens [b, q, d] for `decode`)."""
        tokens = self.image(images, train=train, rng=rng)["tokens"]
        embedding, caption = self.image_head(tokens)
        return l2_normalize(embedding), caption

    def encode_image(self, images: jax.Array, *, train: bool = False,
                     rng: jax.Array | None = None) -> jax.Array:
        """Normalised float images [b, H, W, c] -> L2-normalised embeddings [b, e]."""
        return self.image_features(images, train=train, rng=rng)[0]

    def encode_text(self, ids: jax.Array, mask: jax.Array, *, token_embeds: jax.Array | None = None,
                    train: bool = False, rng: jax.Array | None = None) -> jax.Array:
        """Token ids and padding mask [b, L] -> L2-normalised CLS embeddings [b, e]."""
        out = self.text(ids, mask, token_embeds=token_embeds, train=train, rng=rng)
        return l2_normalize(self.text_proj(out["pooled"]))

    def decode(self, caption_tokens: jax.Array, ids: jax.Array, mask: jax.Array) -> jax.Array:
        """Caption tokens [b, q, d], ids/mask [b, L] -> next-token logits [b, L, vocab] (float32)."""
        return self.decoder(self.text(ids, mask)["tokens"], caption_tokens)

    def __call__(self, batch: Mapping[str, jax.Array], *, train: bool = False,
                 rng: jax.Array | None = None) -> dict[str, jax.Array]:
        image_rng, text_rng = tower_rngs(rng)
        image_embed, caption_tokens = self.image_features(batch["image"], train=train, rng=image_rng)
        text = self.text(batch["text"], batch["text_mask"], train=train, rng=text_rng)
        return {
            "image_embed": image_embed,
            "text_embed": l2_normalize(self.text_proj(text["pooled"])),
            "logit_scale": jnp.exp(self.logit_scale[...]),
            "caption_logits": self.decoder(text["tokens"], caption_tokens),
        }


def check_coca(cfg: Mapping) -> None:
    """Pooler sizes and layout, a text tower with a CLS to pool, the image head's projection."""
    model = cfg["model"]
    coca, heads = model["coca"], model["coca"]["pooler_heads"]
    require_choice(coca, "model.coca", "pooler", POOLERS)
    require_choice(coca, "model.coca", "decoder_block", BLOCKS)
    require_positive(coca, "model.coca", "caption_queries", "pooler_heads", "multimodal_depth")
    dims = {"model.text.width": model["text"]["width"]}
    if coca["pooler"] == "paper":
        dims["model.embed_dim"] = model["embed_dim"]
    for key, dim in dims.items():
        if dim % heads:
            fail("model.coca.pooler_heads", f"({heads}) does not divide {key} ({dim})",
                 "pick pooler heads that divide it")
    if coca["pooler"] == "open_clip" and coca["caption_queries"] < 2:
        fail("model.coca.caption_queries", "must be at least 2 with pooler='open_clip'",
             "query 0 is the contrastive embedding, the rest feed the decoder (open_clip: 256)")
    if model["image"].get("pool") not in ("cls", "gap"):
        fail("model.image.pool", f"={model['image'].get('pool')!r} is unused by CoCa",
             "use 'gap' (patch tokens only) or 'cls' (class token pooled too)")
    if model["image"]["proj"] != "linear":
        fail("model.image.proj", f"={model['image']['proj']!r} is unused by CoCa (its image "
             "head has its own projection)", "leave it at 'linear'")
    if model["text"].get("pool") != "cls" or not model["text"].get("causal", True):
        fail("model.text.pool", f"={model['text'].get('pool')!r}: CoCa's unimodal text tower "
             "pools an appended CLS token with causal attention",
             "set --config.model.text.pool=cls (and model.text.causal=True)")
    if model["use_logit_bias"]:
        fail("model.use_logit_bias", "is not supported by CoCa", "set it to False")
