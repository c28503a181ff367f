"""FILIP (Yao et al. 2022): contrastive learning on token-wise late-interaction similarities.

loss = (CE over the rows of scale_i * s_I + CE over the columns of scale_t * s_T) / 2, with
s_I and s_T from `token_similarity` (image tokens: the ViT's patch tokens; text tokens: the
valid positions of `batch["text_mask"]`). Cross-entropies go through log-softmax (never
exp of raw logits, which overflows at FILIP's temperatures). With
`model.filip.temperature_per_direction` the text->image direction has its own temperature.

Implementations: "dense" builds the [B, n, B, m] tensor (small batches, and the reference);
"chunked" tiles it on one device; "ring" (default) tiles it per device while the texts
circulate over the batch shards, and is "chunked" when the batch is not split.
"""

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from vlmjax.errors import ConfigError
from vlmjax.objectives.contrastive import blockwise_ring, check_contrastive_options
from vlmjax.objectives.objective import Objective
from vlmjax.objectives.ring import batch_ring
from vlmjax.objectives.token_selection import select_tokens
from vlmjax.objectives.token_similarity import (
    blockwise_token_similarities,
    dense_token_similarities,
)

FILIP_OPTIONS = {
    "implementation": "ring",
    "chunk_size": 32,  # examples per tile side: a tile holds chunk² · n · m similarities
    "label_smoothing": 0.0,  # the authors' re-implementation uses 0.1
    "token_selection": 1.0,  # fraction of tokens kept per example (the paper's option: 0.25)
    "selection_group": 0,  # examples scored together for selection; 0 = one device's batch shard
}


def smoothed_cross_entropy(logits: jax.Array, label_smoothing: float, axis: int) -> jax.Array:
    """Mean CE of each row (axis=1) or column (axis=0) against the diagonal, label-smoothed.

    (1 - eps) * (lse - logit_ii) + eps * (lse - mean_j logit_ij), without a [B, B] label matrix.
    """
    lse = jax.nn.logsumexp(logits, axis=axis)
    positive = jnp.diagonal(logits)
    nll = lse - positive
    if label_smoothing:
        nll = (1 - label_smoothing) * nll + label_smoothing * (lse - jnp.mean(logits, axis=axis))
    return jnp.mean(nll)


def token_similarities(x: jax.Array, x_mask: jax.Array, y: jax.Array, y_mask: jax.Array, *,
                       implementation: str = "ring", chunk_size: int = 32
                       ) -> tuple[jax.Array, jax.Array]:
    """(s_I, s_T) [B, B] by the named implementation; all give the same numbers."""
    if implementation == "dense":
        return dense_token_similarities(x, x_mask, y, y_mask)
    return blockwise_token_similarities(x, x_mask, y, y_mask, ring=blockwise_ring(implementation),
                                        chunk_size=chunk_size)


def filip_loss(outputs: Mapping[str, jax.Array], options: Mapping,
               batch: Mapping[str, jax.Array] | None = None) -> tuple[jax.Array, dict]:
    """FILIP's symmetric token-wise contrastive loss; text validity from batch["text_mask"]."""
    if batch is None:
        raise ValueError("the filip objective reads the text padding mask from `batch`")
    options = {**FILIP_OPTIONS, **options}
    x, y = outputs["image_tokens"], outputs["text_tokens"]
    x_mask = jnp.ones(x.shape[:2], bool)
    y_mask = batch["text_mask"].astype(bool)
    if options["token_selection"] < 1:
        group = options["selection_group"] or x.shape[0] // batch_ring().size
        x, x_mask, y, y_mask = select_tokens(x, x_mask, y, y_mask,
                                             fraction=options["token_selection"], group=group,
                                             chunk_size=options["chunk_size"])
    s_image, s_text = token_similarities(x, x_mask, y, y_mask,
                                         implementation=options["implementation"],
                                         chunk_size=options["chunk_size"])
    scale_i = outputs["logit_scale"]
    scale_t = outputs.get("logit_scale_t2i", scale_i)
    eps = options["label_smoothing"]
    image_to_text = smoothed_cross_entropy(scale_i * s_image, eps, axis=1)
    text_to_image = smoothed_cross_entropy(scale_t * s_text, eps, axis=0)
    loss = (image_to_text + text_to_image) / 2
    labels = jnp.arange(s_image.shape[0])
    metrics = {"loss": loss, "logit_scale": scale_i,
               "i2t_accuracy": jnp.mean(jnp.argmax(s_image, axis=1) == labels),
               "t2i_accuracy": jnp.mean(jnp.argmax(s_text, axis=0) == labels)}
    if "logit_scale_t2i" in outputs:
        metrics["logit_scale_t2i"] = scale_t
    return loss, metrics


def _check(config: Mapping) -> None:
    check_contrastive_options(config, FILIP_OPTIONS)
    objective = {**FILIP_OPTIONS, **config["objective"]}
    if not 0 <= objective["label_smoothing"] < 1:
        raise ConfigError(f"config.objective.label_smoothing={objective['label_smoothing']} must "
                          "lie in [0, 1); use e.g. 0.0 or 0.1")
    if not 0 < objective["token_selection"] <= 1:
        raise ConfigError(f"config.objective.token_selection={objective['token_selection']} must "
                          "lie in (0, 1]; 1.0 keeps every token, FILIP's option is 0.25")
    group = objective["selection_group"]
    if group < 0 or (group and config["train"]["batch_size"] % group):
        raise ConfigError(f"config.objective.selection_group={group} must be 0 (one device's "
                          f"batch shard) or divide train.batch_size ({config['train']['batch_size']})")


FILIP = Objective(name="filip", loss=filip_loss, options=FILIP_OPTIONS, consumes=frozenset({"tokens"}),
                   check=_check)
