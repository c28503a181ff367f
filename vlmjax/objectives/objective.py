"""What an objective is: a loss over model outputs plus its options, defaults and checks.

The train loop only calls `objective.loss(outputs, options, batch)`; adding an objective means
one module defining its Objective and one line in `objectives.registry`, never editing the loop.
"""

import dataclasses
from collections.abc import Callable, Mapping

import jax

# (model outputs, config.objective options, the global batch: ids, masks, ...) -> (loss, metrics).
# Contrastive losses ignore the batch; captioning losses read their targets from it.
LossFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


@dataclasses.dataclass(frozen=True)
class Objective:
    """A training objective: its loss function, config options and model requirements."""

    name: str
    loss: LossFn  # (model outputs, options, batch=None) -> (scalar loss, metrics)
    options: Mapping = dataclasses.field(default_factory=dict)  # defaults of config.objective.*
    # What it trains, in the terms model families declare their outputs in (`ModelFamily.outputs`):
    # "embeddings" (pooled image/text embeddings), "tokens" (per-token embeddings), "captions"
    # (next-token logits). A family trains with it when the two sets are equal.
    consumes: frozenset[str] = frozenset({"embeddings"})
    check: Callable[[Mapping], None] = lambda config: None  # raises ConfigError if unusable
