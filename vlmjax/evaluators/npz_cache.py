"""Evaluation caches on disk (class-prompt features, frozen image features) as .npz files."""

import os
from collections.abc import Mapping
from typing import Any

import numpy as np


def save_npz_atomically(path: str, arrays: Mapping[str, Any]) -> None:
    """Writes `arrays` to `path` (.npz) through a temporary file: readers of an evaluation
    cache never see a partial file."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp.npz"
    np.savez(tmp, **{k: np.asarray(v) for k, v in arrays.items()})
    os.replace(tmp, path)


def load_npz(path: str) -> dict[str, np.ndarray] | None:
    """Every array of a cache file, or None when there is none."""
    if not (path and os.path.isfile(path)):
        return None
    with np.load(path) as cached:
        return dict(cached)
