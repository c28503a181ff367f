"""CoCa's objective: contrastive_weight * CLIP loss + caption_weight * next-token captioning loss."""

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from vlmjax.errors import ConfigError
from vlmjax.objectives.contrastive import (
    CONTRASTIVE_OPTIONS,
    check_contrastive_options,
    softmax_contrastive,
)
from vlmjax.objectives.registry import Objective, register

COCA_OPTIONS = {**CONTRASTIVE_OPTIONS, "contrastive_weight": 1.0, "caption_weight": 2.0,
                "label_smoothing": 0.0}


def caption_loss(logits: jax.Array, ids: jax.Array, mask: jax.Array,
                 label_smoothing: float = 0.0) -> jax.Array:
    """Cross-entropy of logits[:, :-1] against ids[:, 1:], averaged over non-padded targets."""
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    targets, valid = ids[:, 1:], mask[:, 1:].astype(jnp.float32)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    if label_smoothing:
        nll = (1 - label_smoothing) * nll - label_smoothing * logp.mean(axis=-1)
    return jnp.sum(nll * valid) / jnp.maximum(jnp.sum(valid), 1.0)


def coca_loss(outputs: Mapping[str, jax.Array], options: Mapping,
              batch: Mapping[str, jax.Array] | None = None) -> tuple[jax.Array, dict]:
    """Weighted sum of the softmax contrastive loss and the captioning loss (targets from batch)."""
    if batch is None:
        raise ValueError("the coca objective reads its caption targets from `batch`")
    options = {**COCA_OPTIONS, **options}
    contrastive, accuracy = softmax_contrastive(
        outputs["image_embed"], outputs["text_embed"], outputs["logit_scale"],
        implementation=options["implementation"], chunk_size=options["chunk_size"])
    caption = caption_loss(outputs["caption_logits"], batch["text"], batch["text_mask"],
                           options["label_smoothing"])
    loss = options["contrastive_weight"] * contrastive + options["caption_weight"] * caption
    return loss, {"loss": loss, "contrastive_loss": contrastive, "caption_loss": caption,
                  "logit_scale": outputs["logit_scale"], **accuracy}


def _check(config: Mapping) -> None:
    check_contrastive_options(config)
    objective = {**COCA_OPTIONS, **config["objective"]}
    for key in ("contrastive_weight", "caption_weight"):
        if objective[key] < 0:
            raise ConfigError(f"config.objective.{key}={objective[key]} must be >= 0; the CoCa "
                              "defaults are contrastive_weight=1.0, caption_weight=2.0")
    if not 0 <= objective["label_smoothing"] < 1:
        raise ConfigError(f"config.objective.label_smoothing={objective['label_smoothing']} must "
                          "lie in [0, 1); use e.g. 0.0 or 0.1")


COCA = register(Objective(name="coca", loss=coca_loss, options=COCA_OPTIONS, models=("coca",),
                          check=_check))
