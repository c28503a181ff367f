"""SigLIP's pairwise sigmoid loss: every image-text pair is an independent binary label."""

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from vlmjax.errors import ConfigError
from vlmjax.objectives.contrastive import contrastive_accuracy
from vlmjax.objectives.registry import Objective, register


def siglip_loss(outputs: Mapping[str, jax.Array], options: Mapping) -> tuple[jax.Array, dict]:
    """-sum(log_sigmoid(z * (s * img @ txt.T + b))) / B with z = +1 on the diagonal, -1 off it."""
    del options
    logits = outputs["logit_scale"] * jnp.einsum(
        "ie,te->it", outputs["image_embed"], outputs["text_embed"]) + outputs["logit_bias"]
    n = logits.shape[0]
    signs = 2 * jnp.eye(n, dtype=logits.dtype) - 1
    loss = -jnp.sum(jax.nn.log_sigmoid(signs * logits)) / n
    return loss, {"loss": loss, "logit_scale": outputs["logit_scale"],
                  "logit_bias": outputs["logit_bias"], **contrastive_accuracy(logits)}


def _check(config: Mapping) -> None:
    if not config["model"]["use_logit_bias"]:
        raise ConfigError("config.objective.name='siglip' needs a learnable bias; set "
                          "--config.model.use_logit_bias=true (SigLIP inits: logit_scale_init="
                          "log(10)=2.3026, logit_bias_init=-10)")


SIGLIP = register(Objective(name="siglip", loss=siglip_loss, check=_check))
