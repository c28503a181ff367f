"""An evaluator's options as a frozen dataclass: the typed view of its `config.evals.<name>`.

Each evaluator module declares `Options` (every key with its default; tuples for lists). The
registry exposes `schema(Options)` to the config layer (completion, validation, CLI overrides
keep working on plain dicts) and hands evaluators and their checks `options_from(Options,
section)`.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

from vlmjax.errors import ConfigError

T = TypeVar("T")
COMMON_KEYS = ("kind", "every")  # every evaluator's keys (registry.EVAL_COMMON), not its options'


def schema(options_type: type) -> dict[str, Any]:
    """The options' keys with their defaults, as the config schema lists them."""
    return dataclasses.asdict(options_type())


def options_from(options_type: type[T], given: T | Mapping) -> T:
    """`given` as `options_type`: itself, or a mapping of some of its keys (the rest default;
    `kind` and `every` ignored; lists become tuples). An unknown key is a ConfigError."""
    if isinstance(given, options_type):
        return given
    fields = {f.name: f for f in dataclasses.fields(options_type)}
    unknown = sorted(set(given) - set(fields) - set(COMMON_KEYS))
    if unknown:
        raise ConfigError(f"unknown evaluator options {unknown}; {options_type.__module__} takes "
                          f"{', '.join(fields)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in given.items() if k in fields}
    return options_type(**values)
