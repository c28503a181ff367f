"""Per-pixel cross-entropy on (pseudo-)labels: MaskCLIP+'s student loss.

outputs["seg_logits"] [b, H, W, C] (class v of the logits is mask value v: background first),
batch["pseudo_mask"] int [b, H, W] with values 0..C-1 or `IGNORE` (255: left out). The loss is
the mean over counted pixels of -log softmax(logits)[label] (0 when no pixel counts), with
`label_smoothing` spread over the C classes as optax does; "pixel_acc" is the agreement of
the argmax with the labels on counted pixels.
"""

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from vlmjax.objectives.objective import Objective
from vlmjax.options import fail

IGNORE = 255
OPTIONS = {"label_smoothing": 0.0}


def pseudo_segmentation_loss(outputs: Mapping[str, jax.Array], options: Mapping,
                             batch: Mapping[str, jax.Array] | None = None
                             ) -> tuple[jax.Array, dict]:
    """The mean cross-entropy over non-ignored pixels (module doc)."""
    if batch is None or "pseudo_mask" not in batch:
        raise ValueError("the pseudo_segmentation objective reads batch['pseudo_mask']: train "
                         "on data.name='fashion_mnist_scenes_pseudo_seg'")
    o = {**OPTIONS, **options}
    logits = outputs["seg_logits"].astype(jnp.float32)
    labels = batch["pseudo_mask"].astype(jnp.int32)
    if labels.shape != logits.shape[:-1]:
        raise ValueError(f"pseudo_mask {labels.shape} does not match the logits' pixels "
                         f"{logits.shape[:-1]}")
    c = logits.shape[-1]
    counted = (labels != IGNORE) & (labels >= 0) & (labels < c)
    target = jax.nn.one_hot(jnp.where(counted, labels, 0), c, dtype=jnp.float32)
    smoothing = o["label_smoothing"]
    target = target * (1 - smoothing) + smoothing / c
    ce = -jnp.sum(target * jax.nn.log_softmax(logits, axis=-1), axis=-1)
    total = jnp.maximum(counted.sum(), 1).astype(jnp.float32)
    loss = jnp.sum(jnp.where(counted, ce, 0.0)) / total
    correct = (jnp.argmax(logits, axis=-1) == labels) & counted
    metrics = {"loss": loss, "pixel_acc": correct.sum() / total,
               "counted_fraction": counted.mean()}
    if "logit_scale" in outputs:
        metrics["logit_scale"] = jnp.mean(outputs["logit_scale"])
    return loss, metrics


def _check(config: Mapping) -> None:
    o = {**OPTIONS, **config["objective"]}
    if not 0 <= o["label_smoothing"] < 1:
        fail("objective.label_smoothing", f"is {o['label_smoothing']}", "use a value in [0, 1)")


PSEUDO_SEGMENTATION = Objective(name="pseudo_segmentation", loss=pseudo_segmentation_loss,
                                options=OPTIONS, consumes=frozenset({"segmentation"}),
                                check=_check)
