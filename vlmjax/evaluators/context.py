"""What every evaluator gets: the model graph, tokenizer, mesh and data-related config."""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh
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

    @property
    def batch_sharding(self) -> jax.sharding.NamedSharding:
        return batch_sharding(self.mesh, self.rules)


def classify_images(images: np.ndarray, labels: np.ndarray, num_classes: int, batch_size: int,
                    sharding: jax.sharding.NamedSharding, top_classes: Callable[[dict], jax.Array],
                    desc: str) -> dict[str, float]:
    """Classification metrics of `top_classes(global image batch) -> [b, k]` over all images.

    Batches are zero-padded at the end of the data; padded rows are dropped before scoring.
    """
    predictions = []
    for start in tqdm(range(0, len(labels), batch_size), desc=desc, leave=False,
                      disable=jax.process_index() != 0):
        batch, real = padded_global_batch({"image": images}, start, batch_size, sharding)
        predictions.append(np.asarray(top_classes(batch))[:real])
    return classification_metrics(np.concatenate(predictions), labels, num_classes)


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
