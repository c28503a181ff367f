"""The one-line checks that components run on their own config options.

Every component (model family, tower, objective, evaluator, data source, tokenizer kind) owns
its options and checks them itself; these helpers keep the messages uniform: the full config
key, what is wrong, and the fix.
"""

from collections.abc import Iterable, Mapping
from typing import Any

from vlmjax.errors import ConfigError


def fail(key: str, problem: str, fix: str) -> None:
    """Raises ConfigError("config.<key> <problem>; <fix>")."""
    separator = "" if problem.startswith("=") else " "
    raise ConfigError(f"config.{key}{separator}{problem}; {fix}")


def require_choice(section: Mapping, prefix: str, key: str, choices: Iterable[Any]) -> None:
    """`section[key]` is one of `choices`."""
    choices = tuple(choices)
    if section[key] not in choices:
        fail(f"{prefix}.{key}", f"is {section[key]!r}", f"choose one of {', '.join(map(repr, choices))}")


def require_positive(section: Mapping, prefix: str, *keys: str) -> None:
    """Each `section[key]` is > 0."""
    for key in keys:
        if not section[key] > 0:
            fail(f"{prefix}.{key}", f"is {section[key]}", "it must be positive")


def require_non_negative(section: Mapping, prefix: str, *keys: str) -> None:
    """Each `section[key]` is >= 0."""
    for key in keys:
        if section[key] < 0:
            fail(f"{prefix}.{key}", f"is {section[key]}", "it must be >= 0")


def require_divides(section: Mapping, prefix: str, divisor_key: str, value_key: str) -> None:
    """`section[divisor_key]` divides `section[value_key]` (e.g. heads divide the width)."""
    if section[value_key] % section[divisor_key]:
        fail(f"{prefix}.{divisor_key}", f"({section[divisor_key]}) does not divide {prefix}."
             f"{value_key} ({section[value_key]})", f"pick {divisor_key} that divide it")
