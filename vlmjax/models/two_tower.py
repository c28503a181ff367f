"""Two-tower contrastive model (CLIP / SigLIP / LiT): image tower, text tower, temperature."""

import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from vlmjax.models import layers
from vlmjax.models.text import TextConfig, TextTransformer
from vlmjax.models.vit import VisionTransformer, VitConfig

# Parameter-path regexes of each tower, used to lock one (LiT) and by sharding rules.
TOWER_PATTERNS = {"image": r"^image/", "text": r"^text/"}


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """x / ||x|| along the last axis, in float32."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps))


class TwoTower(nnx.Module):
    """Image and text towers projected to a joint space, with learnable scale and bias."""

    def __init__(self, model: Mapping, vocab_size: int, context_length: int, *, rngs: nnx.Rngs):
        act = model["activation"]
        self.dtype = jnp.dtype(model["dtype"])
        stack = dict(remat=model["remat"], scan_layers=model["scan_layers"],
                     norm_eps=model["norm_eps"])
        self.image = VisionTransformer(VitConfig.from_config(model["image"]), model["embed_dim"],
                                       act, rngs=rngs, **stack)
        text_cfg = TextConfig.from_config(model["text"], vocab_size, context_length)
        self.text = TextTransformer(text_cfg, model["embed_dim"], act, rngs=rngs, **stack)
        # log of the logit scale s = exp(t); CLIP: t0 = log(1/0.07), SigLIP: log(10).
        self.logit_scale = layers.param(
            rngs, lambda *_: jnp.asarray(model["logit_scale_init"], jnp.float32), (), ())
        self.logit_bias = layers.param(
            rngs, lambda *_: jnp.asarray(model["logit_bias_init"], jnp.float32), (), ()
        ) if model["use_logit_bias"] else None

    def encode_image(self, images: jax.Array) -> jax.Array:
        """Normalised float images [b, H, W, c] -> L2-normalised embeddings [b, e]."""
        return l2_normalize(self.image(images.astype(self.dtype))["embedding"])

    def encode_text(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
        """Token ids and padding mask [b, L] -> L2-normalised embeddings [b, e]."""
        return l2_normalize(self.text(ids, mask, self.dtype)["embedding"])

    def __call__(self, images: jax.Array, ids: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
        out = {
            "image_embed": self.encode_image(images),
            "text_embed": self.encode_text(ids, mask),
            "logit_scale": jnp.exp(self.logit_scale[...]),
        }
        if self.logit_bias is not None:
            out["logit_bias"] = self.logit_bias[...]
        return out


def clamp_logit_scale(params: dict, max_scale: float) -> dict:
    """Clamps t so that exp(t) <= max_scale, applied after every update (as open_clip does), for
    every temperature the model has (FILIP may have one per direction)."""
    return {**params, **{key: jnp.minimum(params[key], math.log(max_scale))
                         for key in ("logit_scale", "logit_scale_t2i") if key in params}}
