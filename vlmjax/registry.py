"""One registry mechanism for every kind of component: an explicit, read-only table by name.

Objectives, model families, towers, evaluators, training sources, tokenizer kinds and interop
sources are each listed in one table in their part's `registry` module (one line per entry),
so what exists is visible in one place and a lookup failure says which config key chose it and
what the choices are.
"""

from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

from vlmjax.errors import ConfigError

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """name -> component, chosen by the config key `key` (used in the lookup error)."""

    def __init__(self, key: str, entries: Mapping[str, T]):
        self.key = key
        self._entries = dict(entries)

    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def get_or_fail(self, name: object, key: str | None = None) -> T:
        """The entry `name`, or a ConfigError naming the config key and the registered names."""
        if not isinstance(name, str) or name not in self._entries:
            raise ConfigError(f"config.{key or self.key}={name!r} is not registered; choose one "
                              f"of {', '.join(map(repr, self._entries))}")
        return self._entries[name]
