"""Evaluation batches as global arrays over the mesh, and classification over them.

Each process loads (or keeps) only the rows its devices hold, the last batch is zero-padded and
the padded rows are dropped before scoring; outputs are replicated so that every process
computes the same metrics.
"""

import functools
from collections.abc import Callable, Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm import tqdm

from vlmjax.data.eval_sources import RowLoader
from vlmjax.data.prefetch import process_rows, to_global
from vlmjax.evaluators.metrics import classification_metrics


def classify_rows(num_rows: int, load_rows: RowLoader, num_classes: int, batch_size: int,
                  sharding: NamedSharding, top_classes: Callable[[dict], jax.Array],
                  desc: str) -> dict[str, float]:
    """Classification metrics of `top_classes(global image batch) -> [b, k]` (replicated) over
    the `num_rows` examples that `load_rows(indices)` decodes, labels gathered the same way."""
    predictions, all_labels = [], []
    for start in tqdm(range(0, num_rows, batch_size), desc=desc, leave=False,
                      disable=jax.process_index() != 0):
        batch, real = loaded_global_batch(load_rows, num_rows, start, batch_size, sharding)
        predictions.append(np.asarray(top_classes({"image": batch["image"]}))[:real])
        all_labels.append(np.asarray(replicate(batch["label"]))[:real])
    return classification_metrics(np.concatenate(predictions), np.concatenate(all_labels),
                                  num_classes)


def loaded_global_batch(load_rows: RowLoader, num_rows: int, start: int, batch_size: int,
                        sharding: NamedSharding) -> tuple[dict, int]:
    """Global batch {"image", "label"} of rows [start, start + batch_size), zero-padded past
    `num_rows`; each process loads only the rows its devices hold. Returns (batch, real rows)."""
    real = min(batch_size, num_rows - start)
    mine = np.arange(batch_size)[process_rows(sharding, batch_size)]
    images, labels = load_rows(start + mine[mine < real])
    pad = len(mine) - len(labels)
    if pad:
        images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
        labels = np.concatenate([labels, np.zeros((pad, *labels.shape[1:]), labels.dtype)])
    return to_global({"image": images, "label": labels.astype(np.int32)}, sharding), real


def padded_global_batch(arrays: Mapping[str, np.ndarray], start: int, batch_size: int,
                        sharding: NamedSharding) -> tuple[dict, int]:
    """Rows [start, start + batch_size) of in-memory arrays as global arrays, zero-padded at the
    end of the data; global row order is the data order. Returns (batch, real rows)."""
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


@functools.cache
def _replicator(mesh: Mesh) -> Callable[[jax.Array], jax.Array]:
    return jax.jit(lambda a: a, out_shardings=NamedSharding(mesh, PartitionSpec()))


def replicate(x: jax.Array) -> jax.Array:
    """A batch-sharded array as a fully replicated one (readable on every process)."""
    return _replicator(x.sharding.mesh)(x)
