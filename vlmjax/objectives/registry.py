"""String-keyed objective registry: an objective is a loss over model outputs plus its options.

The train loop only calls `objective.loss(outputs, options, batch)`; adding an objective (CoCa, FILIP)
means registering one here, never editing the loop.
"""

import dataclasses
from collections.abc import Callable, Mapping

import jax

from vlmjax.errors import ConfigError

# (model outputs, config.objective options, the global batch: ids, masks, ...) -> (loss, metrics).
# Contrastive losses ignore the batch; captioning losses read their targets from it.
LossFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


@dataclasses.dataclass(frozen=True)
class Objective:
    """A training objective: its loss function, config options and model requirements."""

    name: str
    loss: LossFn  # (model outputs, options, batch=None) -> (scalar loss, metrics)
    options: Mapping = dataclasses.field(default_factory=dict)  # defaults of config.objective.*
    models: tuple[str, ...] = ("two_tower",)  # model families whose outputs it consumes
    check: Callable[[Mapping], None] = lambda config: None  # raises ConfigError if unusable


OBJECTIVES: dict[str, Objective] = {}


def register(objective: Objective) -> Objective:
    """Adds `objective` under its name."""
    OBJECTIVES[objective.name] = objective
    return objective


def get_objective(name: str) -> Objective:
    """The objective registered as `name`, or a ConfigError listing the known ones."""
    _load_builtin()
    if name not in OBJECTIVES:
        raise ConfigError(f"config.objective.name={name!r} is not a registered objective; choose "
                          f"one of {', '.join(sorted(OBJECTIVES))}")
    return OBJECTIVES[name]


def objective_schema(name: str) -> dict:
    """Allowed keys of `config.objective` for objective `name`, with their defaults."""
    return {"name": name, **get_objective(name).options}


def _load_builtin() -> None:
    from vlmjax.objectives import coca, contrastive, filip, sigmoid  # noqa: F401  (registers them)
