"""Runs a study's runs one after another on this machine, each through `launch/local.sh`.

local.sh restarts a run that stopped with a checkpoint (status 75) and, with `processes` > 1,
starts that many processes of one JAX job. A run's output goes to RUN_DIR/run.log. A failed run
is reported with its log and the next one starts; a signal to this process (Ctrl-C, SIGTERM)
lets the current run write its checkpoint and stops the study (the same command resumes it).
"""

import logging
import os
import signal
import subprocess
import time
from collections.abc import Mapping
from types import FrameType

from vlmjax.study.spec import Run

log = logging.getLogger(__name__)

RESUMABLE_EXIT_STATUS = 75  # vlmjax.train's status for "stopped with a checkpoint"
LOG_NAME = "run.log"


def run_command(repo: str, run: Run, config_path: str, run_dir: str) -> list[str]:
    """The local.sh command line of one run."""
    return ["bash", os.path.join(repo, "launch", "local.sh"), config_path, run_dir, *run.override_args()]


def last_error(log_path: str) -> str:
    """The last `error: ...` line of a run's log (vlmjax's one-line errors), else its last line."""
    try:
        with open(log_path, errors="replace") as f:
            lines = [line.strip() for line in f.read()[-200_000:].splitlines() if line.strip()]
    except OSError:
        return ""
    errors = [line for line in lines if "error:" in line.lower()]
    return (errors or lines or [""])[-1][:300]


class StudyInterruptedError(Exception):
    """A signal stopped the study; the current run has written a checkpoint."""


class LocalRunner:
    """Starts each run's local.sh in turn and waits for it, forwarding SIGINT/SIGTERM as SIGTERM."""

    def __init__(self, repo: str, processes: int = 1, env: Mapping[str, str] | None = None):
        self.repo = repo
        self.env = dict(os.environ if env is None else env)
        self.env["VLMJAX_SKIP_SETUP"] = "1"  # the study already runs from the installed .venv
        if processes > 1:
            self.env["VLMJAX_PROCESSES"] = str(processes)
        else:
            self.env.pop("VLMJAX_PROCESSES", None)
        self._child: subprocess.Popen | None = None
        self._signalled: str | None = None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signalled = signal.Signals(signum).name
        log.warning("%s: the current run checkpoints and stops; run the same command to resume",
                    self._signalled)
        if self._child is not None and self._child.poll() is None:
            self._child.send_signal(signal.SIGTERM)  # local.sh stops for good after the checkpoint

    def run(self, run: Run, config_path: str, run_dir: str) -> tuple[int, str, float]:
        """Runs one run to its end: (exit status, log path, seconds); StudyInterruptedError on a signal."""
        os.makedirs(run_dir, exist_ok=True)
        log_path = os.path.join(run_dir, LOG_NAME)
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        start = time.monotonic()
        try:
            with open(log_path, "a") as out:
                out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} study run {run.name}\n")
                out.flush()
                self._child = subprocess.Popen(run_command(self.repo, run, config_path, run_dir),
                                               cwd=self.repo, env=self.env, stdout=out,
                                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
                status = self._child.wait()
        finally:
            self._child = None
            for s, handler in previous.items():
                signal.signal(s, handler)
        if self._signalled:
            raise StudyInterruptedError(f"{self._signalled}: run {run.name} stopped with status {status} "
                              f"(log {log_path}); run the same command to resume the study")
        return status, log_path, time.monotonic() - start
