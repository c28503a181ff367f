"""Host-side watch over the train step's skipped (non-finite) updates: logs each, stops on a run.

The step reports `update_skipped` as a device scalar. Reading it right away would make the host
wait for every step; instead each step's flag is read after the next step was dispatched
(one step late), when it is ready or nearly so, and the device queue never runs dry.
"""

import logging
from collections.abc import Callable

import jax

from vlmjax.errors import TrainingError

log = logging.getLogger(__name__)


class SkipMonitor:
    """Counts skipped updates; `limit` in a row raise a TrainingError naming the last good
    checkpoint (`last_good()` says which)."""

    def __init__(self, limit: int, last_good: Callable[[], str]):
        self.limit, self._last_good = limit, last_good
        self._pending: tuple[int, jax.Array] | None = None
        self.consecutive = self.total = self._window = 0

    def push(self, step: int, skipped: jax.Array) -> None:
        """Records `step`'s flag and reads the previous step's."""
        previous, self._pending = self._pending, (step, skipped)
        if previous is not None:
            self._check(*previous)

    def flush(self) -> None:
        """Reads the flag still pending (waits for its step)."""
        if self._pending is not None:
            self._check(*self._pending)
            self._pending = None

    def take_window(self) -> int:
        """Skipped updates since the last call (for the metrics row of a log step)."""
        count, self._window = self._window, 0
        return count

    def _check(self, step: int, skipped: jax.Array) -> None:
        if not int(skipped):
            self.consecutive = 0
            return
        self.consecutive += 1
        self.total += 1
        self._window += 1
        log.warning("step %d: non-finite loss or gradient, update skipped (%d in a row, %d in "
                    "this run)", step, self.consecutive, self.total)
        if self.consecutive >= self.limit:
            raise TrainingError(
                f"{self.consecutive} consecutive steps (up to step {step}) had a non-finite loss "
                f"or gradient (train.max_consecutive_skips={self.limit}); {self._last_good()}. "
                "Resume from it with a lower optimizer.lr or optimizer.grad_clip_norm, or check "
                "the data of those steps")
