"""SigLIP's pairwise sigmoid loss: every image-text pair is an independent binary label."""

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from vlmjax.errors import ConfigError
from vlmjax.objectives.contrastive import (
    CONTRASTIVE_OPTIONS,
    blockwise_ring,
    check_contrastive_options,
    contrastive_accuracy,
)
from vlmjax.objectives.objective import Objective
from vlmjax.objectives.sigmoid_blockwise import blockwise_sigmoid_loss


def sigmoid_contrastive(image_embed: jax.Array, text_embed: jax.Array, scale: jax.Array,
                        bias: jax.Array, *, implementation: str = "dense", chunk_size: int = 1024
                        ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """SigLIP loss and i2t/t2i accuracies; "chunked"/"ring" are exact, in O(B·chunk) memory."""
    if implementation == "dense":
        logits = scale * jnp.einsum("ie,te->it", image_embed, text_embed) + bias
        n = logits.shape[0]
        signs = 2 * jnp.eye(n, dtype=logits.dtype) - 1
        return -jnp.sum(jax.nn.log_sigmoid(signs * logits)) / n, contrastive_accuracy(logits)
    return blockwise_sigmoid_loss(image_embed, text_embed, scale, bias,
                                  ring=blockwise_ring(implementation), chunk_size=chunk_size)


def siglip_loss(outputs: Mapping[str, jax.Array], options: Mapping,
                batch: Mapping[str, jax.Array] | None = None) -> tuple[jax.Array, dict]:
    """-sum(log_sigmoid(z * (s * img @ txt.T + b))) / B with z = +1 on the diagonal, -1 off it."""
    options = {**CONTRASTIVE_OPTIONS, **options}
    loss, accuracy = sigmoid_contrastive(
        outputs["image_embed"], outputs["text_embed"], outputs["logit_scale"], outputs["logit_bias"],
        implementation=options["implementation"], chunk_size=options["chunk_size"])
    return loss, {"loss": loss, "logit_scale": outputs["logit_scale"],
                  "logit_bias": outputs["logit_bias"], **accuracy}


def _check(config: Mapping) -> None:
    if not config["model"]["use_logit_bias"]:
        raise ConfigError("config.objective.name='siglip' needs a learnable bias; set "
                          "--config.model.use_logit_bias=true (SigLIP inits: logit_scale_init="
                          "log(10)=2.3026, logit_bias_init=-10)")
    check_contrastive_options(config)


SIGLIP = Objective(name="siglip", loss=siglip_loss, options=CONTRASTIVE_OPTIONS,
                    check=_check)
