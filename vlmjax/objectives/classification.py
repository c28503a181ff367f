"""Cross-entropy on class labels: the objective of supervised fine-tuning (`evaluators.finetune`).

Consumes `ZeroShotHeadClassifier` outputs ({"logits"}) and the batch's "label". Not in the
pre-training registry (`config.objective.name` cannot pick it): only fine-tuning builds it.
"""

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import optax

from vlmjax.objectives.objective import Objective

OPTIONS = {"label_smoothing": 0.0}


def classification_loss(outputs: Mapping[str, jax.Array], options: Mapping,
                        batch: Mapping[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean (label-smoothed) cross-entropy over the global batch, and its accuracy."""
    logits = outputs["logits"].astype(jnp.float32)
    labels = batch["label"]
    eps = options.get("label_smoothing", 0.0)
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), eps) if eps else \
        jax.nn.one_hot(labels, logits.shape[-1])
    loss = optax.softmax_cross_entropy(logits, targets).mean()
    accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == labels)
    return loss, {"loss": loss, "accuracy": accuracy}


CLASSIFICATION = Objective(name="classification", loss=classification_loss, options=OPTIONS,
                           consumes=frozenset({"logits"}))
