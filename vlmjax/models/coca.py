"""CoCa (Yu et al. 2022): contrastive image/text embeddings plus an image-conditioned captioner.

Parameters: `image` (ViT trunk: patches -> encoder, without the two-tower pooling head),
`image_head` (attentional poolers + projection), `text` (unimodal decoder + CLS embedding head),
`decoder` (multimodal layers + untied vocabulary head), `logit_scale`.

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
The text decoder's open_clip variants (`model.coca.cls_mask`, `model.coca.decoder_block`, see
text_decoder.py) complete the open_clip layout; `python -m vlmjax.convert --from open_clip`
sets all three.

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
from vlmjax.models.text_decoder import MultimodalDecoder, UnimodalDecoder
from vlmjax.models.two_tower import l2_normalize
from vlmjax.models.vit import VisionTransformer, VitConfig

POOLERS = ("paper", "open_clip")
# LiT: the image tower is the ViT trunk (the poolers are trained, as in CoCa's frozen-feature
# evaluations); the text tower is the whole decoder.
COCA_TOWER_PATTERNS = {"image": r"^image/", "text": r"^(text|decoder)/"}


class VisionTrunk(VisionTransformer):
    """The ViT without ln_post and its pooling/projection head: CoCa pools its tokens itself."""

    def __init__(self, cfg: VitConfig, activation: str, *, rngs: nnx.Rngs, remat: str = "none",
                 scan_layers: bool = False):
        if cfg.pool not in ("cls", "gap"):
            raise ValueError(f"CoCa's ViT pool must be 'cls' or 'gap' (its poolers replace "
                             f"the head), got {cfg.pool!r}")
        super().__init__(cfg, 1, activation, rngs=rngs, remat=remat, scan_layers=scan_layers)
        del self.proj, self.ln_post  # unused: no dead parameters

    def __call__(self, images: jax.Array) -> jax.Array:
        """images: [b, H, W, c] normalised floats -> encoder output [b, n (+1 class token), d]."""
        return self.encode_tokens(images)


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
    """ViT + attentional poolers, unimodal text decoder with CLS, multimodal captioning decoder."""

    def __init__(self, model: Mapping, vocab_size: int, context_length: int, *, rngs: nnx.Rngs):
        act, coca, text = model["activation"], model["coca"], model["text"]
        self.dtype = jnp.dtype(model["dtype"])
        stack = dict(remat=model["remat"], scan_layers=model["scan_layers"])
        vit = VitConfig.from_config(model["image"])
        self.image = VisionTrunk(vit, act, rngs=rngs, **stack)
        self.image_head = ImageHead(coca["pooler"], vit.width, text["width"], model["embed_dim"],
                                    coca["pooler_heads"], coca["caption_queries"], rngs=rngs)
        self.text = UnimodalDecoder(vocab_size, context_length, text["width"], coca["unimodal_depth"],
                                    text["heads"], text["mlp_dim"], model["embed_dim"], act,
                                    rngs=rngs, cls_mask=coca["cls_mask"], **stack)
        self.decoder = MultimodalDecoder(vocab_size, text["width"], coca["multimodal_depth"],
                                         text["heads"], text["mlp_dim"], act, rngs=rngs,
                                         remat=model["remat"], scan=model["scan_layers"],
                                         block=coca["decoder_block"])
        self.logit_scale = layers.param(
            rngs, lambda *_: jnp.asarray(model["logit_scale_init"], jnp.float32), (), ())

    def image_features(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Images -> (L2-normalised embedding [b, e], caption tokens [b, q, d] for `decode`)."""
        embedding, caption = self.image_head(self.image(images.astype(self.dtype)))
        return l2_normalize(embedding), caption

    def encode_image(self, images: jax.Array) -> jax.Array:
        """Normalised float images [b, H, W, c] -> L2-normalised embeddings [b, e]."""
        return self.image_features(images)[0]

    def encode_text(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
        """Token ids and padding mask [b, L] -> L2-normalised CLS embeddings [b, e]."""
        return l2_normalize(self.text(ids, mask, self.dtype)["embedding"])

    def decode(self, caption_tokens: jax.Array, ids: jax.Array, mask: jax.Array) -> jax.Array:
        """Caption tokens [b, q, d], ids/mask [b, L] -> next-token logits [b, L, vocab] (float32).

        `mask` is accepted for API symmetry: causal attention keeps real tokens off padding.
        """
        del mask
        return self.decoder(self.text.tokens(ids, self.dtype), caption_tokens)

    def __call__(self, images: jax.Array, ids: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
        image_embed, caption_tokens = self.image_features(images)
        text = self.text(ids, mask, self.dtype)
        return {
            "image_embed": image_embed,
            "text_embed": l2_normalize(text["embedding"]),
            "logit_scale": jnp.exp(self.logit_scale[...]),
            "caption_logits": self.decoder(text["tokens"], caption_tokens),
        }
