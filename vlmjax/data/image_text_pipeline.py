"""grain pipeline for image-text training: mix sources, decode + augment, skip bad samples, batch,
tokenize, all in worker processes (`mp_prefetch`), with a checkpointable iterator.

Bad samples are dropped *before* batching, so every batch is full. grain's `filter` would drop
them without a trace, and counters kept in worker processes never reach the trainer, so the
drop is `SkipAndCount`: each kept sample carries the number of samples skipped (by reason) since
the previous one, and of damaged or missing shards (`SHARD_COUNTS`), batches sum them, and
`ImageTextIterator` accumulates the totals into its state (checkpointed with the data position)
for the training metrics.

Worker processes end with their parent and received batches hold no /dev/shm segment
(`worker_processes`).
"""

import dataclasses
import logging
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np

from vlmjax.data.image_text_sources import SourceSpec, open_sources
from vlmjax.data.image_text_transform import SHARD_COUNTS, SKIP_REASONS, ImageTextTransform
from vlmjax.data.worker_processes import ExitWithParent, release_shared_memory
from vlmjax.tokenizers import Tokenizer

log = logging.getLogger(__name__)

COUNTERS = SKIP_REASONS + SHARD_COUNTS  # the entries of a batch's `skipped` vector


class _SkipAndCountIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, log_first: int):
        super().__init__(parent)
        self._log_first = log_first
        self._seen = np.zeros(len(SKIP_REASONS), np.int64)  # per worker, for logging only

    def __next__(self) -> dict:
        skipped = np.zeros(len(COUNTERS), np.int32)
        while True:
            sample = next(self._parent)
            reason = sample.get("__skip__")
            if reason is None:
                return {"image": sample["image"], "caption": sample["caption"], "skipped": skipped}
            for name, n in sample.get("__counts__", {reason: 1}).items():
                skipped[COUNTERS.index(name)] += n
            r = SKIP_REASONS.index(reason)
            self._seen[r] += 1
            if self._seen[r] <= self._log_first or self._seen[r] % 1000 == 0:
                log.warning("skipping sample %s: %s (%d so far in this worker)",
                            sample.get("__key__"), reason, self._seen[r])

    def get_state(self) -> dict:
        return self._parent.get_state()

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state)


class SkipAndCount(grain.IterDataset):
    """Drops `{"__skip__": reason}` samples, attaching to each kept one the skip counts since the
    previous kept one (`skipped`: int32 [len(COUNTERS)]). A skip counts 1 under its reason, or
    its `__counts__` ({counter: n}) when it has them. Stateless beyond its parent."""

    def __init__(self, parent: grain.IterDataset, log_first: int = 10):
        super().__init__(parent)
        self._log_first = log_first

    def __iter__(self) -> grain.DatasetIterator:
        return _SkipAndCountIterator(self._parent.__iter__(), self._log_first)


@dataclasses.dataclass(frozen=True)
class FinishBatch(grain.transforms.Map):
    """Batched samples -> model inputs: tokenized captions, uint8 images, and the batch's skip
    counts summed over its samples."""

    tokenizer: Tokenizer
    context_length: int

    def map(self, batch: dict) -> dict:
        ids, mask = self.tokenizer.encode([str(c) for c in batch["caption"]], self.context_length)
        return {"image": batch["image"], "text": ids, "text_mask": mask,
                "skipped": batch["skipped"].sum(axis=0, dtype=np.int64)}


class ReleaseSharedMemory(grain.transforms.Map):
    """Right after the worker processes: the batch's /dev/shm segments are unlinked at once."""

    def map(self, batch: dict) -> dict:
        return release_shared_memory(batch)


@dataclasses.dataclass(frozen=True)
class NormaliseBatch(grain.transforms.Map):
    """uint8 images -> (x / 255 - mean) / std in float32, for consumers that want host-side
    normalisation (training normalises on the device instead)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def map(self, batch: dict) -> dict:
        std = np.asarray(self.std, np.float32)
        image = batch["image"] * (1.0 / (255.0 * std)) - np.asarray(self.mean, np.float32) / std
        return {**batch, "image": image.astype(np.float32, copy=False)}


def image_text_dataset(sources: Sequence[SourceSpec], transform: ImageTextTransform,
                       tokenizer: Tokenizer, context_length: int, batch_size: int, *,
                       seed: int, weights: Sequence[float] = (), process_index: int = 0,
                       process_count: int = 1, cycle_length: int = 4, num_workers: int = 0,
                       worker_buffer: int = 2, normalize: tuple | None = None,
                       missing_shards: str = "error") -> grain.IterDataset:
    """This host's infinite stream of full batches of `batch_size` from a weighted mixture of
    `sources` (uniform when `weights` is empty), decoded and augmented in `num_workers`
    processes (0: in the calling process). `missing_shards`: "error" or "count" (tar brace
    ranges with absent shards, see `expand_shards`)."""
    per_source = [SkipAndCount(ds.map(transform)) for ds in open_sources(
        sources, seed, process_index, process_count, cycle_length, missing_shards)]
    ds = per_source[0] if len(per_source) == 1 else grain.IterDataset.mix(
        per_source, list(weights) if weights else None)
    ds = ds.batch(batch_size, drop_remainder=True).map(FinishBatch(tokenizer, context_length))
    if num_workers > 0:
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=num_workers, per_worker_buffer_size=worker_buffer),
            worker_init_fn=ExitWithParent())
        ds = ds.map(ReleaseSharedMemory())
    if normalize is not None:
        # After the workers: uint8 batches cross the process boundary (a quarter of float32's
        # bytes); the float pass itself is cheap next to that copy.
        ds = ds.map(NormaliseBatch(*normalize))
    return ds


class ImageTextIterator:
    """The pipeline's iterator without the skip counts in its batches: their running totals are
    `skipped` (samples, by reason) and `shards` (damaged or missing shard reads), part of
    `get_state()`, so a resumed run continues the counts."""

    def __init__(self, dataset: grain.IterDataset):
        self._box = [iter(dataset)]
        self.skipped = dict.fromkeys(SKIP_REASONS, 0)
        self.shards = dict.fromkeys(SHARD_COUNTS, 0)
        # Closed when collected or, at the latest, at interpreter exit before multiprocessing's
        # own exit handler, and then dropped: batches still buffered are released while that can
        # be done cleanly (during interpreter teardown grain's own cleanup fails, and their
        # shared memory is left to the resource tracker).
        self._close = weakref.finalize(self, _close_and_drop, self._box)

    @property
    def _iterator(self) -> Any:
        if self._box[0] is None:
            raise ValueError("the image-text iterator is closed")
        return self._box[0]

    def __iter__(self) -> "ImageTextIterator":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = dict(next(self._iterator))
        counts = [int(n) for n in batch.pop("skipped")]
        for reason, n in zip(SKIP_REASONS, counts[:len(SKIP_REASONS)], strict=True):
            self.skipped[reason] += n
        for name, n in zip(SHARD_COUNTS, counts[len(SKIP_REASONS):], strict=True):
            self.shards[name] += n
        if any(counts[len(SKIP_REASONS):]):
            log.warning("data: %s so far (damaged_tar/missing_tar: %d/%d samples known lost)",
                        ", ".join(f"{k}={v}" for k, v in self.shards.items()),
                        self.skipped["damaged_tar"], self.skipped["missing_tar"])
        return batch

    def get_state(self) -> dict:
        return {"pipeline": self._iterator.get_state(), "skipped": dict(self.skipped),
                "shards": dict(self.shards)}

    def set_state(self, state: Mapping[str, Any]) -> None:
        self._iterator.set_state(state["pipeline"])
        self.skipped = {r: int(state["skipped"].get(r, 0)) for r in SKIP_REASONS}
        self.shards = {r: int(state.get("shards", {}).get(r, 0)) for r in SHARD_COUNTS}

    def close(self) -> None:
        """Stops the worker processes (idempotent)."""
        self._close()


def _close_and_drop(box: list) -> None:
    iterator, box[0] = box[0], None
    close = getattr(iterator, "close", None)
    if close is not None:
        close()


def skip_metrics(data_state: Mapping[str, Any]) -> dict[str, float]:
    """Training metrics from an iterator state: total samples skipped so far, per reason and all,
    and damaged / missing shard reads (empty for pipelines without skip counts)."""
    skipped = data_state.get("skipped") if isinstance(data_state, Mapping) else None
    if not skipped:
        return {}
    return {"data/skipped": float(sum(skipped.values())),
            **{f"data/skipped_{r}": float(n) for r, n in skipped.items()},
            **{f"data/{r}": float(n) for r, n in data_state.get("shards", {}).items()}}
