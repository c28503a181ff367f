"""Loader worker processes that do not outlive the process that reads from them, and batches
that leave nothing in /dev/shm.

grain's `mp_prefetch` workers are spawned daemon processes, which multiprocessing ends only at a
clean exit: after a SIGKILL (the OOM killer, a preempted job's hard kill) each worker, a few
hundred MB, would wait forever on a queue nobody reads. `ExitWithParent` runs in every worker
and ends it within a fraction of a second once its parent is gone. (Not prctl's
PR_SET_PDEATHSIG: that fires when the *thread* that spawned the worker exits, and grain starts
workers from whichever thread first reads them. Polling the parent pid works on any POSIX
system.)

Batches cross from the workers in shared memory: each array is a /dev/shm segment that grain's
receiving array unlinks when it is garbage collected, on a thread pool. Arrays still alive at
interpreter exit (a consumer's last batches) are collected too late or never, so their segments
are left to multiprocessing's resource tracker, which removes them and warns "leaked
shared_memory" (and grain's `__del__` fails noisily during interpreter teardown).
`release_shared_memory` swaps each received array for a plain NumPy array over its own mapping of
the same memory and unlinks the segment at once: no copy, nothing left in /dev/shm for a crash
to leak or the tracker to report, and POSIX frees the memory when the last mapping goes.
"""

import contextlib
import mmap
import os
import threading
from collections.abc import Mapping
from multiprocessing import shared_memory
from typing import Any

import numpy as np


def _watch_parent(parent: int, poll_seconds: float) -> None:
    stop = threading.Event()
    while not stop.wait(poll_seconds):
        if os.getppid() != parent:
            os._exit(0)  # no cleanup to run: the parent that would read the results is gone


class ExitWithParent:
    """A grain `worker_init_fn` (called with worker index and count) that starts a daemon
    thread ending the worker when its parent process dies, however it died.

    The parent pid is recorded when the object is pickled, which grain does in the parent
    right before spawning the worker; so it is the spawning process even when the dataset was
    built elsewhere.
    """

    def __init__(self, poll_seconds: float = 0.2):
        self.poll_seconds = poll_seconds
        self.parent: int | None = None

    def __getstate__(self) -> dict:
        return {"poll_seconds": self.poll_seconds, "parent": os.getpid()}

    def __call__(self, worker_index: int = 0, worker_count: int = 1) -> None:
        parent = self.parent if self.parent is not None else os.getppid()
        if os.getppid() != parent:  # died between the spawn and now
            os._exit(0)
        threading.Thread(target=_watch_parent, args=(parent, self.poll_seconds), daemon=True,
                         name="exit-with-parent").start()


def _plain(array: Any) -> Any:
    """A plain ndarray over a grain SharedMemoryArray's memory, its segment unlinked; anything
    else is returned as it is."""
    shm = getattr(array, "shm", None)
    # Only the array that owns its segment and is due to unlink it on deletion (not a view).
    if not (isinstance(shm, shared_memory.SharedMemory) and getattr(array, "_unlink_on_del", False)):
        return array
    try:
        with open(os.path.join("/dev/shm", shm.name), "r+b") as f:
            mapping = mmap.mmap(f.fileno(), 0)
        plain = np.frombuffer(mapping, array.dtype, count=array.size).reshape(array.shape)
    except (OSError, ValueError):  # no /dev/shm (macOS) or an empty segment: a copy
        plain = np.array(array)
    array._unlink_on_del = False  # unlinked here; grain's array only closes its mapping
    with contextlib.suppress(FileNotFoundError):
        shm.unlink()
    return plain


def release_shared_memory(batch: Mapping[str, Any]) -> dict[str, Any]:
    """The batch received from worker processes with every shared-memory array replaced by a
    plain array of the same memory (zero-copy) whose /dev/shm segment is already unlinked."""
    return {k: _plain(v) for k, v in batch.items()}
