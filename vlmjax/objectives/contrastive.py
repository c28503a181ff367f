"""CLIP's softmax contrastive loss (InfoNCE) over the global batch, dense or blockwise.

Under `jax.jit` with a sharded batch the embeddings are global arrays, so the dense [B, B] logits
span the whole global batch and the loss equals the single-device loss on the concatenated batch.
The "chunked" and "ring" implementations give the same numbers without materialising the logits.
"""

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import optax

from vlmjax.errors import ConfigError
from vlmjax.objectives.objective import Objective
from vlmjax.objectives.ring import NO_RING, Ring, batch_ring
from vlmjax.objectives.softmax_blockwise import blockwise_softmax_loss

IMPLEMENTATIONS = ("dense", "chunked", "ring")
# config.objective options shared by the contrastive objectives (CLIP, SigLIP, and CoCa later).
CONTRASTIVE_OPTIONS = {"implementation": "dense", "chunk_size": 1024}


def contrastive_accuracy(logits: jax.Array) -> dict[str, jax.Array]:
    """In-batch retrieval accuracy in both directions (diagonal pairs are the positives)."""
    labels = jnp.arange(logits.shape[0])
    return {
        "i2t_accuracy": jnp.mean(jnp.argmax(logits, axis=1) == labels),
        "t2i_accuracy": jnp.mean(jnp.argmax(logits, axis=0) == labels),
    }


def check_contrastive_options(config: Mapping, defaults: Mapping = CONTRASTIVE_OPTIONS) -> None:
    """Raises ConfigError on an unknown config.objective.implementation or a bad chunk_size
    (`defaults`: the objective's own option defaults)."""
    objective = {**defaults, **config["objective"]}
    if objective["implementation"] not in IMPLEMENTATIONS:
        raise ConfigError(f"config.objective.implementation={objective['implementation']!r} is not "
                          f"a contrastive loss implementation; choose one of "
                          f"{', '.join(map(repr, IMPLEMENTATIONS))}")
    if objective["chunk_size"] <= 0:
        raise ConfigError(f"config.objective.chunk_size={objective['chunk_size']} must be positive; "
                          "use e.g. --config.objective.chunk_size=1024")


def blockwise_ring(implementation: str) -> Ring:
    """The Ring a blockwise implementation runs on (ValueError for an unknown name)."""
    if implementation not in IMPLEMENTATIONS[1:]:
        raise ValueError(f"unknown contrastive loss implementation {implementation!r}; "
                         f"choose one of {', '.join(IMPLEMENTATIONS)}")
    return batch_ring() if implementation == "ring" else NO_RING


def softmax_contrastive(image_embed: jax.Array, text_embed: jax.Array, scale: jax.Array, *,
                        implementation: str = "dense", chunk_size: int = 1024
                        ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """CLIP loss and i2t/t2i accuracies; "chunked"/"ring" are exact, in O(B·chunk) memory.

    The one entry point for every objective with a softmax contrastive term (CLIP, CoCa).
    """
    if implementation == "dense":
        logits = scale * jnp.einsum("ie,te->it", image_embed, text_embed)
        labels = jnp.arange(logits.shape[0])
        image_to_text = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        text_to_image = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean()
        return (image_to_text + text_to_image) / 2, contrastive_accuracy(logits)
    return blockwise_softmax_loss(image_embed, text_embed, scale,
                                  ring=blockwise_ring(implementation), chunk_size=chunk_size)


def clip_loss(outputs: Mapping[str, jax.Array], options: Mapping,
              batch: Mapping[str, jax.Array] | None = None) -> tuple[jax.Array, dict]:
    """Mean of the image->text (rows) and text->image (columns) cross-entropies."""
    options = {**CONTRASTIVE_OPTIONS, **options}
    loss, accuracy = softmax_contrastive(
        outputs["image_embed"], outputs["text_embed"], outputs["logit_scale"],
        implementation=options["implementation"], chunk_size=options["chunk_size"])
    return loss, {"loss": loss, "logit_scale": outputs["logit_scale"], **accuracy}


CLIP = Objective(name="clip", loss=clip_loss, options=CONTRASTIVE_OPTIONS,
                  check=check_contrastive_options)
