"""A pretrained model's image tower under a linear head initialised from its zero-shot classifier.

logits = normalised image embedding @ head^T + bias, with head = logit scale x the zero-shot
class embeddings and bias = 0 at the start, so that before any step the classifier predicts
exactly what zero-shot does (the initialisation of WiSE-FT and FLYP). The whole pretrained
model is kept as `backbone` (any family's `encode_image` works); fine-tuning locks everything
but its image tower.
"""

from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx


class ZeroShotHeadClassifier(nnx.Module):
    """`backbone.encode_image` followed by a [C, e] linear head and a bias."""

    def __init__(self, backbone: nnx.Module, head: jax.Array):
        self.backbone = backbone
        self.head = nnx.Param(jnp.asarray(head, jnp.float32), logical_axes=(None, "joint"))
        self.bias = nnx.Param(jnp.zeros((head.shape[0],), jnp.float32), logical_axes=(None,))

    def __call__(self, batch: Mapping[str, jax.Array], *, train: bool = False,
                 rng: jax.Array | None = None) -> dict[str, jax.Array]:
        """A batch's normalised images -> {"logits": [b, C]} (its other arrays are unused)."""
        embed = self.backbone.encode_image(batch["image"], train=train, rng=rng)
        return {"logits": jnp.einsum("be,ce->bc", embed, self.head[...]) + self.bias[...]}
