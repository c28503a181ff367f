"""Two-tower contrastive model (CLIP / SigLIP / LiT): image tower, text tower, projections,
temperature and optional logit bias."""

from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from vlmjax.models import layers
from vlmjax.models.embedding import l2_normalize
from vlmjax.models.projection import side_projection
from vlmjax.models.tower import TowerSettings
from vlmjax.models.towers import build_tower

# Parameter-path regexes of each tower with its projection, used to lock one (LiT).
TOWER_PATTERNS = {"image": r"^image(_proj)?/", "text": r"^text(_proj)?/"}


def scalar(rngs: nnx.Rngs, value: float) -> nnx.Param:
    """A float32 scalar parameter initialised to `value` (temperature, bias)."""
    return layers.param(rngs, lambda *_: jnp.asarray(value, jnp.float32), (), ())


def tower_rngs(rng: jax.Array | None) -> tuple[jax.Array | None, jax.Array | None]:
    """Independent step keys for the image and the text tower."""
    if rng is None:
        return None, None
    return jax.random.fold_in(rng, 0), jax.random.fold_in(rng, 1)


class TwoTower(nnx.Module):
    """Image and text towers projected to a joint space, with learnable scale and bias."""

    def __init__(self, model: Mapping, vocab_size: int, context_length: int, *, rngs: nnx.Rngs):
        settings = TowerSettings.from_model(model, vocab_size, context_length)
        # Creation order fixes which random key each parameter gets: tower, then its projection.
        self.image = build_tower(model, "image", settings, rngs)
        self.image_proj = side_projection(model, "image", self.image.width, rngs)
        self.text = build_tower(model, "text", settings, rngs)
        self.text_proj = side_projection(model, "text", self.text.width, rngs)
        # log of the logit scale s = exp(t); CLIP: t0 = log(1/0.07), SigLIP: log(10).
        self.logit_scale = scalar(rngs, model["logit_scale_init"])
        self.logit_bias = scalar(rngs, model["logit_bias_init"]) if model["use_logit_bias"] else None

    def encode_image(self, images: jax.Array, *, train: bool = False,
                     rng: jax.Array | None = None) -> jax.Array:
        """Normalised float images [b, H, W, c] -> L2-normalised embeddings [b, e]."""
        return l2_normalize(self.image_proj(self.image(images, train=train, rng=rng)["pooled"]))

    def encode_text(self, ids: jax.Array, mask: jax.Array, *, token_embeds: jax.Array | None = None,
                    train: bool = False, rng: jax.Array | None = None) -> jax.Array:
        """Token ids and padding mask [b, L] -> L2-normalised embeddings [b, e]."""
        out = self.text(ids, mask, token_embeds=token_embeds, train=train, rng=rng)
        return l2_normalize(self.text_proj(out["pooled"]))

    def encode_image_tokens(self, images: jax.Array, *, train: bool = False,
                            rng: jax.Array | None = None) -> jax.Array:
        """Normalised float images -> L2-normalised per-token embeddings [b, n, e] in the joint
        space (the tower's tokens through the same projection as its pooled features)."""
        return l2_normalize(self.image_proj(self.image(images, train=train, rng=rng)["tokens"]))

    def __call__(self, batch: Mapping[str, jax.Array], *, train: bool = False,
                 rng: jax.Array | None = None) -> dict[str, jax.Array]:
        image_rng, text_rng = tower_rngs(rng)
        out = {
            "image_embed": self.encode_image(batch["image"], train=train, rng=image_rng),
            "text_embed": self.encode_text(batch["text"], batch["text_mask"], train=train,
                                           rng=text_rng),
            "logit_scale": jnp.exp(self.logit_scale[...]),
        }
        if self.logit_bias is not None:
            out["logit_bias"] = self.logit_bias[...]
        return out
