"""`launch/local.sh` with 2 processes: a SIGTERM to one makes both checkpoint the same step and
exit 75, local.sh starts the run again, and it ends with the parameters of an uninterrupted run,
bit for bit."""

import os
import re
import signal
import subprocess

import pytest

from tests.conftest import REPO
from tests.launch_helpers import (
    assert_same_params,
    cpu_env,
    latest,
    logged_steps,
    no_evals_config,
    wait_until,
)

STEPS = 60  # a row every step: the SIGTERM follows the first at once, mid-run even on a fast machine


def _command(config: str, workdir: str, data_dir: str) -> list[str]:
    return ["bash", os.path.join(REPO, "launch", "local.sh"), config, workdir,
            f"--config.data.dir={data_dir}", f"--config.train.num_steps={STEPS}",
            "--config.train.checkpoint_every=30", "--config.train.log_every=1",
            "--config.optimizer.schedule=constant"]


def _train_processes(workdir: str) -> dict[int, int]:
    """{VLMJAX_PROCESS_ID: pid} of the Python processes local.sh started for `workdir`."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
        except OSError:
            continue
        if b"vlmjax.train" in argv and workdir.encode() in argv and b"VLMJAX_PROCESS_ID" in environ:
            found[int(environ[b"VLMJAX_PROCESS_ID"])] = int(entry)
    return found


@pytest.fixture(scope="module")
def runs(tmp_path_factory, synthetic_data_dir):
    tmp = tmp_path_factory.mktemp("local_sh")
    config = no_evals_config(str(tmp))
    env = cpu_env(str(tmp / "cache"))
    env["VLMJAX_PROCESSES"] = "2"
    reference, interrupted = str(tmp / "reference"), str(tmp / "interrupted")
    done = subprocess.run(_command(config, reference, synthetic_data_dir), cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    proc = subprocess.Popen(_command(config, interrupted, synthetic_data_dir), cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: logged_steps(interrupted), 300, "the first logged step",
                   lambda: proc.poll() is None)
        pids = _train_processes(interrupted)
        assert sorted(pids) == [0, 1], pids
        os.kill(pids[1], signal.SIGTERM)  # one process only: JAX's preemption sync tells the other
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    return reference, interrupted, proc.returncode, out


def test_sigterm_to_one_process_checkpoints_both_at_one_step_and_local_sh_resumes(runs):
    reference, interrupted, status, out = runs
    assert status == 0, out[-3000:]
    stops = re.findall(r"\[process (\d)\] stopped: .*wrote the checkpoint of step (\d+)", out)
    assert sorted(p for p, _ in stops) == ["0", "1"], out[-3000:]
    (step,) = {int(s) for _, s in stops}  # the same step on both
    assert 0 < step < STEPS
    assert "stopped with a checkpoint (status 75)" in out
    assert "the run stopped with a checkpoint (status 75): restart 1 of at most 100" in out
    assert sorted(re.findall(rf"\[process (\d)\] .*resumed from step {step}\b", out)) == ["0", "1"]
    assert "all 2 processes finished" in out
    assert latest(interrupted) == latest(reference) == STEPS
    assert_same_params(interrupted, reference, STEPS)
    assert logged_steps(interrupted) == logged_steps(reference) == list(range(1, STEPS + 1))
