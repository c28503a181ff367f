"""Clean early stops: SIGTERM, SIGINT or a wall-clock limit end the run after the current step.

The train loop asks `StopRequests.should_stop(step)` after every step; when it says yes, the loop
writes a checkpoint of that step and raises `TrainingStoppedError` (exit status 75, which the
launchers restart on).

Every process must stop after the same step, or their checkpoints would disagree. In a
multi-process job JAX's preemption service already solves this: it catches SIGTERM (on any
process), and `reached_preemption_sync_point(step)` turns true on every process at the same
step (the largest step any process had reached, plus one). SIGINT and the wall-clock limit are
fed into that same mechanism by sending this process a SIGTERM. A single process just keeps a
flag set by its own signal handlers.
"""

import logging
import os
import signal
import threading
import time
from types import FrameType

import jax
from jax._src import distributed
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)

# EX_TEMPFAIL (sysexits.h): "temporary failure, retry later" -- stopped cleanly, resumable.
RESUMABLE_EXIT_STATUS = 75


def _preemption_service() -> bool:
    """True when JAX's preemption sync manager runs (multi-process jobs, the default option)."""
    return jax.process_count() > 1 and distributed.global_state.preemption_sync_manager is not None


class StopRequests:
    """Watches for SIGTERM/SIGINT and a wall-clock limit; a context manager owning the handlers.

    A second SIGINT (Ctrl-C twice) stops at once with KeyboardInterrupt, without a checkpoint.
    """

    def __init__(self, time_limit_seconds: float = 0.0):
        self._deadline = time.monotonic() + time_limit_seconds if time_limit_seconds > 0 else None
        self._time_limit = time_limit_seconds
        self._shared = _preemption_service()
        self._previous: dict[int, object] = {}
        self.reason: str | None = None

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is not threading.main_thread():
            return self  # Python only lets the main thread install signal handlers.
        # In a multi-process job SIGTERM stays with JAX's preemption notifier.
        signals = (signal.SIGINT,) if self._shared else (signal.SIGINT, signal.SIGTERM)
        for signum in signals:
            self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGINT and self.reason == "SIGINT":
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        if self.reason is None or signum == signal.SIGINT:
            self.reason = name
            log.warning("%s received: stopping after the current step with a checkpoint "
                        "(Ctrl-C twice stops at once, without one)", name)
            self._notify_peers()

    def _notify_peers(self) -> None:
        if self._shared:
            os.kill(os.getpid(), signal.SIGTERM)  # JAX's notifier tells the other processes

    def should_stop(self, step: int) -> bool:
        """True once a stop was requested (on any process); the same `step` on every process.

        Call it after every step (JAX's agreement counts the calls).
        """
        if self._deadline is not None and self.reason is None and time.monotonic() > self._deadline:
            self.reason = f"the wall-clock limit (train.time_limit_seconds={self._time_limit:g})"
            log.warning("reached %s: stopping after the current step with a checkpoint", self.reason)
            self._notify_peers()
        if self._shared:
            if multihost_utils.reached_preemption_sync_point(step):
                self.reason = self.reason or "a preemption notice (SIGTERM) to one of the processes"
                return True
            return False
        return self.reason is not None
