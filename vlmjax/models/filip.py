"""FILIP's model: the two towers of CLIP whose every token is projected to the joint space.

Same parameters as `TwoTower` (so LiT, sharding rules and checkpoints carry over), plus
`logit_scale_t2i` when `model.filip.temperature_per_direction` is set. Image tokens are the
tower's tokens (a ViT's patch tokens after ln_post; the class token is not one of them); text
tokens are every position, with the padding mask saying which are real.
"""

from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from vlmjax.models.embedding import l2_normalize
from vlmjax.models.two_tower import TwoTower, scalar, tower_rngs
from vlmjax.options import fail

OPTIONS = {"filip": {"temperature_per_direction": False}}


class Filip(TwoTower):
    """Two towers with token-level outputs for late interaction."""

    def __init__(self, model: Mapping, vocab_size: int, context_length: int, *, rngs: nnx.Rngs):
        super().__init__(model, vocab_size, context_length, rngs=rngs)
        self.logit_scale_t2i = scalar(rngs, model["logit_scale_init"]) if (
            model["filip"]["temperature_per_direction"]) else None

    def encode_text_tokens(self, ids: jax.Array, mask: jax.Array, *,
                           token_embeds: jax.Array | None = None, train: bool = False,
                           rng: jax.Array | None = None) -> jax.Array:
        """Token ids and mask [b, L] -> L2-normalised token embeddings [b, L, e] (pads included;
        the mask says which are real)."""
        out = self.text(ids, mask, token_embeds=token_embeds, train=train, rng=rng)
        return l2_normalize(self.text_proj(out["tokens"]))

    def __call__(self, batch: Mapping[str, jax.Array], *, train: bool = False,
                 rng: jax.Array | None = None) -> dict[str, jax.Array]:
        image_rng, text_rng = tower_rngs(rng)
        out = {
            "image_tokens": self.encode_image_tokens(batch["image"], train=train, rng=image_rng),
            "text_tokens": self.encode_text_tokens(batch["text"], batch["text_mask"], train=train,
                                                   rng=text_rng),
            "logit_scale": jnp.exp(self.logit_scale[...]),
        }
        if self.logit_scale_t2i is not None:
            out["logit_scale_t2i"] = jnp.exp(self.logit_scale_t2i[...])
        return out


def check_filip(cfg: Mapping) -> None:
    """FILIP scores tokens: a MAP head would be unused, and its loss has no logit bias."""
    model = cfg["model"]
    if model["image"].get("pool") == "map":
        fail("model.image.pool", "='map' is unused by FILIP (it scores patch tokens)",
             "use 'gap' or 'cls'")
    if model["use_logit_bias"]:
        fail("model.use_logit_bias", "is not supported by FILIP", "set it to False")
