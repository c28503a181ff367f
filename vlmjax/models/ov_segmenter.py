"""An open-vocabulary segmenter: a per-token class embedding on an image tower (MaskCLIP+'s
student), scored against given class embeddings and upsampled to pixels.

Every image token (a ViT patch or a ResNet feature-map position, row-major on a square grid)
is mapped, after a LayerNorm, linearly into the joint space and L2-normalised; its logit for
class k is exp(logit_scale) * cos(token, q_k) with q_k the given unit class embeddings (a
teacher's text embeddings, fixed), and a learned background embedding is scored the same way
(the background is a class of the pseudo-labels). Logits [b, g, g, 1 + K] (background first:
index v is mask value v of the scenes) are upsampled bilinearly to the image's pixels. No text
tower: classes never trained on are segmented through their text embeddings alone.
"""

import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from vlmjax.models import layers
from vlmjax.models.embedding import l2_normalize
from vlmjax.models.tower import TowerSettings
from vlmjax.models.towers import build_tower
from vlmjax.models.two_tower import scalar

TOWER_PATTERNS = {"image": r"^image/"}


class OVSegmenter(nnx.Module):
    """An image tower with a per-token class-embedding head (module doc)."""

    def __init__(self, model: Mapping, vocab_size: int, context_length: int, *, rngs: nnx.Rngs):
        settings = TowerSettings.from_model(model, vocab_size, context_length)
        self.image = build_tower(model, "image", settings, rngs)
        width, embed = self.image.width, model["embed_dim"]
        self.token_norm = layers.LayerNorm(width, rngs=rngs, eps=model["norm_eps"])
        self.class_kernel = layers.param(rngs, layers.xavier(), (width, embed), ("embed", None))
        self.class_bias = layers.param(rngs, layers.zeros, (embed,), (None,))
        self.background = layers.param(rngs, layers.normal(embed ** -0.5), (embed,), ("joint",))
        self.logit_scale = scalar(rngs, model["logit_scale_init"])

    def token_embeddings(self, images: jax.Array, *, train: bool = False,
                         rng: jax.Array | None = None) -> jax.Array:
        """Normalised images [b, H, W, c] -> unit class embeddings [b, g, g, e] per token."""
        tokens = self.image(images, train=train, rng=rng)["tokens"]
        b, n, _ = tokens.shape
        grid = math.isqrt(n)
        if grid * grid != n:
            raise ValueError(f"the ov_segmenter places its {n} image tokens on a square grid; use "
                             "an image tower whose tokens are its patches (ViT pool 'gap' or "
                             "'cls', ResNet)")
        x = self.token_norm(tokens)
        x = layers.dense(x, self.class_kernel[...].astype(x.dtype), self.class_bias[...].astype(
            x.dtype))
        return l2_normalize(x.astype(jnp.float32)).reshape(b, grid, grid, -1)

    def segment(self, images: jax.Array, queries: jax.Array, *, train: bool = False,
                rng: jax.Array | None = None) -> jax.Array:
        """Logits [b, H, W, 1 + K] (background first) against unit queries [K, e] or [b, K, e]."""
        embed = self.token_embeddings(images, train=train, rng=rng)
        queries = queries.astype(jnp.float32)
        if queries.ndim == 2:
            queries = jnp.broadcast_to(queries, (embed.shape[0], *queries.shape))
        background = jnp.broadcast_to(l2_normalize(self.background[...].astype(jnp.float32)),
                                      (embed.shape[0], 1, embed.shape[-1]))
        classes = jnp.concatenate([background, queries], axis=1)
        logits = jnp.einsum("bhwe,bke->bhwk", embed, classes) * jnp.exp(self.logit_scale[...])
        b, h, w = images.shape[:3]
        return jax.image.resize(logits, (b, h, w, logits.shape[-1]), "linear")

    def __call__(self, batch: Mapping[str, jax.Array], *, train: bool = False,
                 rng: jax.Array | None = None) -> dict[str, jax.Array]:
        if "class_embed" not in batch:
            raise ValueError("the ov_segmenter trains on batches with the teacher's class "
                             "embeddings: data.name='fashion_mnist_scenes_pseudo_seg'")
        return {"seg_logits": self.segment(batch["image"], batch["class_embed"], train=train,
                                           rng=rng),
                "logit_scale": jnp.exp(self.logit_scale[...])}
