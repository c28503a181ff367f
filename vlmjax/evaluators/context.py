"""What every evaluator gets: the model graph, tokenizer, mesh and data-related config."""

import dataclasses
import functools
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm import tqdm

from vlmjax.data.prefetch import process_rows, to_global
from vlmjax.evaluators.metrics import classification_metrics
from vlmjax.parallel.logical import Rules
from vlmjax.parallel.mesh import batch_sharding
from vlmjax.tokenizers import Tokenizer


@dataclasses.dataclass(frozen=True)
class EvalContext:
    """Shared, static inputs of evaluators."""

    graphdef: Any
    tokenizer: Tokenizer
    context_length: int
    mesh: Mesh
    rules: Rules
    config: Mapping  # the full experiment config (data dir, normalisation, ...)
    # Evaluating a saved checkpoint (vlmjax.evaluate): which one, and where evaluators may cache
    # what depends only on it (class-prompt features). Empty during training: nothing cached.
    checkpoint: str = ""
    cache_dir: str = ""

    @property
    def batch_sharding(self) -> jax.sharding.NamedSharding:
        return batch_sharding(self.mesh, self.rules)


RowLoader = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # indices -> (images, labels)


def classify_images(images: np.ndarray, labels: np.ndarray, num_classes: int, batch_size: int,
                    sharding: jax.sharding.NamedSharding, top_classes: Callable[[dict], jax.Array],
                    desc: str) -> dict[str, float]:
    """Classification metrics of `top_classes(global image batch) -> [b, k]` over in-memory images."""
    return classify_rows(len(labels), lambda rows: (images[rows], labels[rows]), num_classes,
                         batch_size, sharding, top_classes, desc)


def classify_rows(num_rows: int, load_rows: RowLoader, num_classes: int, batch_size: int,
                  sharding: jax.sharding.NamedSharding, top_classes: Callable[[dict], jax.Array],
                  desc: str) -> dict[str, float]:
    """Classification metrics over `num_rows` examples that `load_rows(indices)` decodes.

    Each process loads only the rows its devices hold; the last batch is zero-padded and the
    padded rows are dropped before scoring. `top_classes` returns replicated predictions, and
    the labels are gathered the same way, so every process computes the same metrics.
    """
    predictions, all_labels = [], []
    for start in tqdm(range(0, num_rows, batch_size), desc=desc, leave=False,
                      disable=jax.process_index() != 0):
        batch, real = loaded_global_batch(load_rows, num_rows, start, batch_size, sharding)
        predictions.append(np.asarray(top_classes({"image": batch["image"]}))[:real])
        all_labels.append(np.asarray(_replicate(batch["label"]))[:real])
    return classification_metrics(np.concatenate(predictions), np.concatenate(all_labels),
                                  num_classes)


def loaded_global_batch(load_rows: RowLoader, num_rows: int, start: int, batch_size: int,
                        sharding: jax.sharding.NamedSharding) -> tuple[dict, int]:
    """Global batch {"image", "label"} of rows [start, start + batch_size), zero-padded past
    `num_rows`; each process loads only the rows its devices hold. Returns (batch, real rows)."""
    real = min(batch_size, num_rows - start)
    mine = np.arange(batch_size)[process_rows(sharding, batch_size)]
    images, labels = load_rows(start + mine[mine < real])
    pad = len(mine) - len(labels)
    if pad:
        images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
        labels = np.concatenate([labels, np.zeros((pad,), labels.dtype)])
    return to_global({"image": images, "label": labels.astype(np.int32)}, sharding), real


def save_npz_atomically(path: str, arrays: Mapping[str, Any]) -> None:
    """Writes `arrays` to `path` (.npz) through a temporary file: readers of an evaluation
    cache never see a partial file."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp.npz"
    np.savez(tmp, **{k: np.asarray(v) for k, v in arrays.items()})
    os.replace(tmp, path)


@functools.cache
def _replicator(mesh: Mesh) -> Callable[[jax.Array], jax.Array]:
    return jax.jit(lambda a: a, out_shardings=NamedSharding(mesh, PartitionSpec()))


def _replicate(x: jax.Array) -> jax.Array:
    """A batch-sharded array as a fully replicated one (readable on every process)."""
    return _replicator(x.sharding.mesh)(x)


def padded_global_batch(arrays: Mapping[str, np.ndarray], start: int, batch_size: int,
                        sharding: jax.sharding.NamedSharding) -> tuple[dict, int]:
    """Rows [start, start + batch_size) as global arrays, zero-padded at the end of the data.

    Each process contributes the rows its devices hold, so global row order is the data order.
    Returns the batch and the number of real (unpadded) rows.
    """
    n = len(next(iter(arrays.values())))
    real = min(batch_size, n - start)
    mine = process_rows(sharding, batch_size)
    local = {}
    for key, value in arrays.items():
        rows = value[start: start + real]
        if real < batch_size:
            pad = np.zeros((batch_size - real, *value.shape[1:]), value.dtype)
            rows = np.concatenate([rows, pad])
        local[key] = rows[mine]
    return to_global(local, sharding), real
