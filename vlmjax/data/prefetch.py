"""Moves host batches onto the mesh ahead of the train step, remembering each iterator state."""

import queue
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding


def process_rows(sharding: NamedSharding, global_batch_size: int) -> slice:
    """The contiguous rows of a global batch that this process's devices hold.

    `make_array_from_process_local_data` places each process's rows where its devices sit in
    the mesh, which need not be rows [p * b, (p + 1) * b) (TPU meshes reorder devices).
    """
    index_map = sharding.addressable_devices_indices_map((global_batch_size,))
    starts = sorted({(s[0].start or 0, s[0].stop or global_batch_size) for s in index_map.values()})
    lo, hi = starts[0][0], starts[-1][1]
    covered = sum(stop - start for start, stop in starts)
    if covered != hi - lo:
        raise ValueError(f"process {jax.process_index()} holds non-contiguous batch rows {starts}; "
                         "order the mesh so each process's devices are adjacent on the batch axes")
    return slice(lo, hi)


def to_global(batch: Mapping[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Assembles per-process batch shards into global arrays split over the batch axis."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


class DevicePrefetcher:
    """Background thread: next batch -> device; yields (batch, iterator state after it).

    The state returned with a batch is what a checkpoint written after consuming that batch
    must store, so batches that were prefetched but not trained on are read again on resume.
    """

    def __init__(self, iterator: Any, sharding: NamedSharding, size: int = 2):
        self._iterator, self._sharding = iterator, sharding
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="device-prefetch")
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                batch = next(self._iterator)
                item = (to_global(batch, self._sharding), self._iterator.get_state())
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as e:  # surfaced to the consumer, never swallowed
            self._queue.put(e)

    def __iter__(self) -> Iterator[tuple[dict[str, jax.Array], dict]]:
        return self

    def __next__(self) -> tuple[dict[str, jax.Array], dict]:
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
