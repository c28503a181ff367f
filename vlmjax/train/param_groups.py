"""Regex rules over parameter paths ("image/encoder/layers/0/attn/query"): groups and masks."""

import re
from collections.abc import Callable
from typing import Any

import jax


def path_string(path: tuple) -> str:
    """'a/b/0/c' from a pytree key path of dict keys / indices / attributes."""
    parts = []
    for key in path:
        for attr in ("key", "idx", "name"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
    return "/".join(parts)


def map_with_path(fn: Callable[[str, Any], Any], tree: Any) -> Any:
    """tree.map where `fn` receives the '/'-joined path string and the leaf."""
    return jax.tree_util.tree_map_with_path(lambda p, x: fn(path_string(p), x), tree)


def matches(pattern: str, tree: Any) -> Any:
    """Bool tree: True where the leaf's path matches `pattern` (re.search)."""
    regex = re.compile(pattern)
    return map_with_path(lambda path, _: bool(regex.search(path)), tree)
