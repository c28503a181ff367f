"""Stop requests: two processes agree on the step to stop after; the wall-clock limit; the
environment checks that run before compiling."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO
from vlmjax.errors import CheckpointError, ConfigError
from vlmjax.train.preemption import StopRequests
from vlmjax.train.workdir import check_free_disk, check_writable

# Each process steps at its own pace and asks StopRequests after every step, as the train loop does.
WORKER = """
import sys, time
import jax
from vlmjax.parallel.distributed import initialize_distributed
initialize_distributed(sys.argv[1], 2, int(sys.argv[2]))
from vlmjax.train.preemption import StopRequests
with StopRequests() as stops:
    print("ready", flush=True)
    for step in range(1, 100000):
        time.sleep(0.01 * (1 + int(sys.argv[2])))
        if stops.should_stop(step):
            print("stop", step, stops.reason, flush=True)
            break
"""


def test_two_processes_stop_after_the_same_step_when_one_gets_sigint():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TPU_", "VLMJAX_"))}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1",
               PYTHONPATH=REPO)
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, address, str(i)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for i in range(2)]
    try:
        for proc in procs:
            assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        procs[1].send_signal(signal.SIGINT)  # the slower process; JAX tells the other one
        lines = [proc.communicate(timeout=120)[0].split() for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert [proc.returncode for proc in procs] == [0, 0]
    assert lines[0][0] == lines[1][0] == "stop"
    assert lines[0][1] == lines[1][1]  # the same step on both
    assert lines[1][2] == "SIGINT"


def test_wall_clock_limit_requests_a_stop():
    with StopRequests(time_limit_seconds=0.2) as stops:
        assert not stops.should_stop(1)
        time.sleep(0.3)
        assert stops.should_stop(2)
        assert "train.time_limit_seconds=0.2" in stops.reason
    with StopRequests() as stops:  # no limit, no signal
        time.sleep(0.01)
        assert not stops.should_stop(1)


def test_sigterm_in_one_process_is_a_request_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM)
    with StopRequests() as stops:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert stops.should_stop(7) and stops.reason == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before


def test_unwritable_workdir_and_full_disk_fail_with_one_line(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(ConfigError, match=r"the workdir .*file/run is not writable"):
        check_writable(str(not_a_dir / "run"))
    check_writable(str(tmp_path / "run"))  # created, probe removed
    assert os.listdir(tmp_path / "run") == []
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(CheckpointError, match="MiB free but one checkpoint of this model needs"):
        check_free_disk(str(tmp_path), 2 * free + 2 ** 30)
    check_free_disk(str(tmp_path), 1)
