"""FILIP's model: the two towers of CLIP whose every token is projected to the joint space.

Same parameters as `TwoTower` (so LiT, sharding rules and checkpoints carry over), plus
`logit_scale_t2i` when `model.filip.temperature_per_direction` is set. Image tokens are the
ViT's patch tokens after ln_post (the class token, if any, is not one of them); text tokens are
every position after ln_final, with the padding mask saying which are real.
"""

from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from vlmjax.models import layers
from vlmjax.models.two_tower import TwoTower, l2_normalize


class Filip(TwoTower):
    """Two towers with token-level outputs for late interaction."""

    def __init__(self, model: Mapping, vocab_size: int, context_length: int, *, rngs: nnx.Rngs):
        if model["image"]["pool"] == "map":
            raise ValueError("FILIP uses the patch tokens, so the MAP head would be unused; "
                             "use model.image.pool 'gap' or 'cls'")
        super().__init__(model, vocab_size, context_length, rngs=rngs)
        self.logit_scale_t2i = layers.param(
            rngs, lambda *_: jnp.asarray(model["logit_scale_init"], jnp.float32), (), ()
        ) if model["filip"]["temperature_per_direction"] else None

    def encode_image_tokens(self, images: jax.Array) -> jax.Array:
        """Normalised float images [b, H, W, c] -> L2-normalised patch embeddings [b, n, e]."""
        tokens = self.image(images.astype(self.dtype))["tokens"]
        return l2_normalize(jnp.einsum("bnd,de->bne", tokens, self.image.proj[...].astype(self.dtype)))

    def encode_text_tokens(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
        """Token ids and mask [b, L] -> L2-normalised token embeddings [b, L, e] (pads included;
        the mask says which are real)."""
        tokens = self.text(ids, mask, self.dtype)["tokens"]
        return l2_normalize(jnp.einsum("bld,de->ble", tokens, self.text.proj[...].astype(self.dtype)))

    def __call__(self, images: jax.Array, ids: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
        out = {
            "image_tokens": self.encode_image_tokens(images),
            "text_tokens": self.encode_text_tokens(ids, mask),
            "logit_scale": jnp.exp(self.logit_scale[...]),
        }
        if self.logit_scale_t2i is not None:
            out["logit_scale_t2i"] = jnp.exp(self.logit_scale_t2i[...])
        return out
