"""What every evaluator gets: an evaluation context, never the trainer or the raw config.

`EvalContext` offers the model (its graph and the capabilities its family declares), the
tokenizer, the image preprocessing (size, channels, normalisation), the mesh, where on-disk
datasets live, where a checkpoint's evaluation caches go, and the one service an evaluator
cannot build from those: `train_classifier`, the jitted supervised training of a classifier
(fine-tuning), provided by the train layer (dependency inversion: evaluators never import it).
"""

import dataclasses
import functools
import os
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm import tqdm

from vlmjax.data.normalization import Normalization
from vlmjax.data.prefetch import process_rows, to_global
from vlmjax.errors import ConfigError
from vlmjax.evaluators.metrics import classification_metrics
from vlmjax.parallel.logical import Rules
from vlmjax.parallel.mesh import batch_sharding
from vlmjax.tokenizers import Tokenizer


@dataclasses.dataclass(frozen=True)
class ModelView:
    """What evaluators know of the model: its graph, family and declared capabilities."""

    graphdef: Any
    name: str  # the family (cache keys and messages only, never to decide what to run)
    capabilities: frozenset[str]  # models.family.CAPABILITIES
    scoring: str  # the capability its image-text scores use: "embedding" or "token_wise"
    towers: Mapping[str, str]  # tower name -> parameter path regex
    embed_dim: int

    def require(self, capability: str, evaluator: str, fix: str) -> None:
        """ConfigError unless the model has `capability` (named in the message with `fix`)."""
        if capability not in self.capabilities:
            raise ConfigError(f"{evaluator} needs a model with {capability!r} (e.g. "
                              f"{_EXAMPLES.get(capability, 'another family')}), but model.name="
                              f"{self.name!r} offers {', '.join(sorted(self.capabilities))}; {fix}")


_EXAMPLES = {"embedding": "two_tower, coca", "token_wise": "filip", "captions": "coca",
             "image_tokens": "two_tower, filip"}


class ClassifierTrainer(Protocol):
    """Builds the training of a classifier module (`models.classifier`) on labelled batches:
    returns (init(params) -> train state, step(state, batch) -> (state, metrics)), jitted with
    the run's mesh. `trainable` is a regex of the parameter paths that train (the rest is
    locked); `options` has lr, warmup_steps, steps, weight_decay, label_smoothing."""

    def __call__(self, graphdef: Any, abstract_params: Any, trainable: str,
                 options: Mapping) -> tuple[Callable, Callable]: ...


@dataclasses.dataclass(frozen=True)
class EvalContext:
    """Shared, static inputs of evaluators."""

    model: ModelView
    tokenizer: Tokenizer
    context_length: int
    image_size: int
    channels: int
    normalize: Normalization  # uint8 images -> the model's float inputs
    mesh: Mesh
    rules: Rules
    data_dir: str = ""  # where on-disk datasets live (config.data.dir)
    train_classifier: ClassifierTrainer | None = None
    # Evaluating a saved checkpoint (vlmjax.evaluate): which one, and where evaluators may cache
    # what depends only on it (class-prompt features). Empty during training: nothing cached.
    checkpoint: str = ""
    cache_dir: str = ""

    @property
    def batch_sharding(self) -> jax.sharding.NamedSharding:
        return batch_sharding(self.mesh, self.rules)

    @property
    def graphdef(self) -> Any:
        return self.model.graphdef

    @property
    def image(self) -> dict[str, int]:
        """The model's input images: {"image_size", "channels"} (what eval sources resize to)."""
        return {"image_size": self.image_size, "channels": self.channels}

    def default_data_dir(self, dataset: str, data_dir: str) -> str:
        """An evaluator's data_dir, or where on-disk datasets live for one of those ("" lets
        TFDS benchmarks use TFDS's own default)."""
        from vlmjax.data.datasets import DATASETS
        return data_dir or (self.data_dir if dataset in DATASETS else "")


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


@dataclasses.dataclass(frozen=True)
class EvalFacts:
    """What an evaluator's config check may rely on, before anything is built or compiled."""

    capabilities: frozenset[str]
    model_name: str
    data_dir: str
    image_size: int
    channels: int
    batch_shards: int  # evaluation batch sizes must divide over these
