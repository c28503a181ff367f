"""Faults during training, on real `vlmjax.train` processes (forked by tests/fault_harness.py):
SIGKILL at random moments, SIGTERM, a truncated checkpoint, NaN losses; every recovered run
must end with the parameters of an uninterrupted one, bit for bit."""

import glob
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests.conftest import REPO, TINY_CONFIG

STEPS = 40
CHECKPOINT_EVERY = 2
RESUMABLE = 75  # vlmjax.train.preemption.RESUMABLE_EXIT_STATUS


def _env(cache_dir: str) -> dict:
    """2 CPU devices (sharded checkpoints, fast tiny steps); one persistent compilation cache, so
    only the first run compiles (every run's programs are identical: the data hooks and a
    constant learning rate keep them so)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TPU_", "VLMJAX_"))}
    env.update(XLA_FLAGS="--xla_force_host_platform_device_count=2 "
               "--xla_backend_optimization_level=0", JAX_PLATFORMS="cpu",
               JAX_COMPILATION_CACHE_DIR=cache_dir, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0", PYTHONPATH=REPO)
    return env


class Harness:
    """Client of the fork server: starts train runs, waits for them, reads their logs."""

    def __init__(self, tmp: str, data_dir: str):
        self.tmp = tmp
        self.config = os.path.join(tmp, "no_evals.py")
        with open(self.config, "w") as f:
            f.write("from vlmjax.config import load_config_file\n\n\ndef get_config():\n"
                    f"    c = load_config_file({TINY_CONFIG!r})\n"
                    "    del c.evals['zeroshot']\n    return c\n")
        self.overrides = [
            f"--config.data.dir={data_dir}", f"--config.train.checkpoint_every={CHECKPOINT_EVERY}",
            "--config.train.log_every=2", "--config.train.keep_checkpoints=2",
            "--config.optimizer.schedule=constant", "--config.data.flip=true",
            "--config.data.translate=2"]
        self.server = subprocess.Popen(
            [sys.executable, os.path.join(REPO, "tests", "fault_harness.py")], cwd=REPO,
            env=_env(os.path.join(tmp, "compilation_cache")), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True)
        self.runs = 0

    def _ask(self, request: dict) -> dict:
        self.server.stdin.write(json.dumps(request) + "\n")
        self.server.stdin.flush()
        return json.loads(self.server.stdout.readline())

    def start(self, workdir: str, steps: int = STEPS, *extra: str, poison=(), drop=()) -> tuple:
        """Starts a run; returns (pid, log path)."""
        self.runs += 1
        log = os.path.join(self.tmp, f"run{self.runs}.log")
        argv = ["--config", self.config, "--workdir", workdir, *self.overrides,
                f"--config.train.num_steps={steps}", *extra]
        return self._ask({"argv": argv, "log": log, "poison": list(poison),
                          "drop": list(drop)})["pid"], log

    def wait(self, pid: int) -> int:
        return self._ask({"wait": pid})["status"]

    def run(self, workdir: str, steps: int = STEPS, *extra: str, **hooks) -> tuple[int, str]:
        """Runs to the end: (exit status, log text)."""
        pid, log = self.start(workdir, steps, *extra, **hooks)
        status = self.wait(pid)
        with open(log) as f:
            return status, f.read()

    def close(self) -> None:
        self.server.stdin.close()
        self.server.wait(timeout=60)


@pytest.fixture(scope="module")
def harness(tmp_path_factory, synthetic_data_dir):
    h = Harness(str(tmp_path_factory.mktemp("faults")), synthetic_data_dir)
    yield h
    h.close()


@pytest.fixture(scope="module")
def reference(harness, tmp_path_factory) -> str:
    """The uninterrupted run (it also fills the compilation cache)."""
    workdir = str(tmp_path_factory.mktemp("reference"))
    status, log = harness.run(workdir)
    assert status == 0, log[-3000:]
    return workdir


def _logged_steps(workdir: str) -> list[int]:
    """Steps of the training rows of metrics.jsonl (a line being written is ignored)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip().endswith("}")]
    return [r["step"] for r in rows if "loss" in r]


def _params(workdir: str, step: int) -> dict:
    return ocp.StandardCheckpointer().restore(
        os.path.join(workdir, "checkpoints", str(step), "state"))["params"]


def _assert_same_params(workdir: str, reference: str, step: int = STEPS,
                        reference_step: int = STEPS) -> None:
    want, got = _params(reference, reference_step), _params(workdir, step)
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(want)[0], jax.tree.leaves(got),
                            strict=True):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))


def _checkpoint_steps(workdir: str) -> list[int]:
    names = os.listdir(os.path.join(workdir, "checkpoints"))
    return sorted(int(n) for n in names if n.isdigit())


def _wait_for(condition, pid_alive, timeout: float = 120.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline and pid_alive():
        if condition():
            return True
        time.sleep(0.005)
    return False


def _alive(pid: int):
    """The runs are the fork server's children: alive while not gone or a zombie."""
    def check() -> bool:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False
    return check


def _pointer(workdir: str) -> int:
    try:
        with open(os.path.join(workdir, "checkpoints", "LATEST")) as f:
            return int(f.read())
    except (FileNotFoundError, ValueError):
        return 0


def test_sigkill_at_ten_random_moments_then_resume_is_bit_identical(harness, reference, tmp_path):
    """Two runs are killed in each of five restart cycles: each after it committed a new
    checkpoint, at a random moment or the moment its next asynchronous save is being written."""
    lanes = [str(tmp_path / "lane0"), str(tmp_path / "lane1")]
    rng = random.Random(0)
    moments, statuses = [], []
    for cycle in range(5):
        started = [(workdir, _pointer(workdir), harness.start(workdir)[0]) for workdir in lanes]
        for lane, (workdir, pointer, pid) in enumerate(started):
            alive = _alive(pid)
            _wait_for(lambda w=workdir, p=pointer: _pointer(w) > p, alive)
            if (2 * cycle + lane) % 3 == 1:  # while the next save is under way
                tmp_dirs = os.path.join(workdir, "checkpoints", "*.orbax-checkpoint-tmp*")
                found = _wait_for(lambda t=tmp_dirs: glob.glob(t), alive)
                moments.append("mid-save" if found else "ended")
            else:
                time.sleep(rng.uniform(0.0, 0.8))
                moments.append("random")
            os.kill(pid, signal.SIGKILL)
            statuses.append(harness.wait(pid))
    assert moments.count("mid-save") >= 2, moments
    assert statuses.count(-signal.SIGKILL) >= 8, statuses  # a run may end before its kill
    for workdir in lanes:
        assert _pointer(workdir) < STEPS
        status, log = harness.run(workdir)
        assert status == 0, log[-3000:]
        assert "resumed from step" in log
        _assert_same_params(workdir, reference)
        # metrics.jsonl has each step once: rows after the restored checkpoint were replaced.
        assert _logged_steps(workdir) == list(range(2, STEPS + 1, 2))


def test_sigterm_checkpoints_the_current_step_and_the_restart_continues(harness, reference,
                                                                        tmp_path):
    workdir = str(tmp_path / "terminated")
    pid, log_path = harness.start(workdir)
    _wait_for(lambda: len(_logged_steps(workdir)) >= 3, _alive(pid))
    os.kill(pid, signal.SIGTERM)
    assert harness.wait(pid) == RESUMABLE
    with open(log_path) as f:
        log = f.read()
    stopped = int(log.split("wrote the checkpoint of step ")[1].split()[0])
    assert 6 <= stopped < STEPS
    assert stopped in _checkpoint_steps(workdir)
    with open(os.path.join(workdir, "checkpoints", "LATEST")) as f:
        assert int(f.read()) == stopped
    status, log = harness.run(workdir)
    assert status == 0, log[-3000:]
    assert f"resumed from step {stopped}" in log
    _assert_same_params(workdir, reference)


def test_truncated_newest_checkpoint_is_reported_and_the_previous_one_resumes(harness, reference,
                                                                           tmp_path):
    workdir = str(tmp_path / "truncated")
    shutil.copytree(reference, workdir)
    newest, previous = STEPS, STEPS - CHECKPOINT_EVERY
    assert _checkpoint_steps(workdir) == [previous, newest]
    files = [p for p in glob.glob(os.path.join(workdir, "checkpoints", str(newest), "**"),
                                  recursive=True) if os.path.isfile(p)]
    for path in files:
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    status, log = harness.run(workdir)
    assert status == 0, log[-3000:]
    assert f"checkpoint {newest} in {workdir}/checkpoints is incomplete or corrupt" in log
    assert f"resumed from step {previous}" in log
    assert glob.glob(os.path.join(workdir, "checkpoints.corrupt", f"{newest}-*"))
    _assert_same_params(workdir, reference)


def test_nan_loss_skips_the_update_and_equals_a_run_without_those_batches(harness, tmp_path):
    poisoned, skipped = str(tmp_path / "poisoned"), str(tmp_path / "skipped")
    bad = (4, 9)  # stream positions, i.e. steps 5 and 10
    status, log = harness.run(poisoned, 12, poison=bad)
    assert status == 0, log[-3000:]
    for step in (5, 10):
        assert f"step {step}: non-finite loss or gradient, update skipped" in log
    with open(os.path.join(poisoned, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert sum(r["update_skipped"] for r in rows) == 2
    assert {r["step"] for r in rows if r["update_skipped"]} == {6, 10}  # the rows logging them
    status, log = harness.run(skipped, 10, drop=bad)
    assert status == 0, log[-3000:]
    _assert_same_params(poisoned, skipped, step=12, reference_step=10)


def test_consecutive_nan_steps_stop_the_run_naming_the_last_good_checkpoint(harness, tmp_path):
    workdir = str(tmp_path / "diverged")
    status, log = harness.run(workdir, 12, "--config.train.max_consecutive_skips=3",
                              poison=(5, 6, 7))
    assert status == 2, log[-3000:]
    assert ("error: 3 consecutive steps (up to step 8) had a non-finite loss or gradient "
            f"(train.max_consecutive_skips=3); the last good checkpoint is step 6 in "
            f"{workdir}/checkpoints") in log
    # Step 6 saved the (finite) state of step 4; step 8's flag is read when step 8 is logged,
    # before its checkpoint would be written.
    assert _checkpoint_steps(workdir) == [4, 6]
