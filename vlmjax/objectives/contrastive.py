"""CLIP's softmax contrastive loss (InfoNCE) over the global batch.

Under `jax.jit` with a sharded batch the embeddings are global arrays, so the [B, B] logits span
the whole global batch and the loss equals the single-device loss on the concatenated batch.
"""

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import optax

from vlmjax.objectives.registry import Objective, register


def contrastive_accuracy(logits: jax.Array) -> dict[str, jax.Array]:
    """In-batch retrieval accuracy in both directions (diagonal pairs are the positives)."""
    labels = jnp.arange(logits.shape[0])
    return {
        "i2t_accuracy": jnp.mean(jnp.argmax(logits, axis=1) == labels),
        "t2i_accuracy": jnp.mean(jnp.argmax(logits, axis=0) == labels),
    }


def clip_loss(outputs: Mapping[str, jax.Array], options: Mapping) -> tuple[jax.Array, dict]:
    """Mean of the image->text (rows) and text->image (columns) cross-entropies."""
    del options
    logits = outputs["logit_scale"] * jnp.einsum(
        "ie,te->it", outputs["image_embed"], outputs["text_embed"])
    labels = jnp.arange(logits.shape[0])
    image_to_text = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    text_to_image = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean()
    loss = (image_to_text + text_to_image) / 2
    return loss, {"loss": loss, "logit_scale": outputs["logit_scale"],
                  **contrastive_accuracy(logits)}


CLIP = register(Objective(name="clip", loss=clip_loss))
