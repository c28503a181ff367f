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
from vlmjax.objectives.objective import Objective

COCA_OPTIONS = {**CONTRASTIVE_OPTIONS, "contrastive_weight": 1.0, "caption_weight": 2.0,
                "label_smoothing": 0.0}


def next_token_log_probs(logits: jax.Array, ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(log p(ids[:, t + 1] | ids[:, :t + 1]) [b, L - 1], full log-softmax [b, L - 1, V])."""
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0], logp


def sequence_log_likelihood(logits: jax.Array, ids: jax.Array, mask: jax.Array) -> jax.Array:
    """Summed log-probability of each sequence's real tokens after the first: [b]."""
    token_logp, _ = next_token_log_probs(logits, ids)
    return jnp.sum(token_logp * mask[:, 1:].astype(jnp.float32), axis=-1)


def caption_loss(logits: jax.Array, ids: jax.Array, mask: jax.Array,
                 label_smoothing: float = 0.0) -> jax.Array:
    """Cross-entropy of logits[:, :-1] against ids[:, 1:], averaged over non-padded targets."""
    token_logp, logp = next_token_log_probs(logits, ids)
    valid = mask[:, 1:].astype(jnp.float32)
    nll = -token_logp
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


COCA = Objective(name="coca", loss=coca_loss, options=COCA_OPTIONS,
                 consumes=frozenset({"embeddings", "captions"}), check=_check)
