"""Moves host batches onto the mesh ahead of the train step, remembering each iterator state."""

import queue
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding


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
