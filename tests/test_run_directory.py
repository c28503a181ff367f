"""A run directory under repeated use: one trainer at a time, config.json kept for a trained run
(allowed changes recorded), re-evaluation without duplicate metric rows, logs off a terminal."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import ml_collections
import pytest

from vlmjax.errors import WorkdirBusyError
from vlmjax.train.loop import train
from vlmjax.train.workdir import WorkdirLock

from .conftest import REPO


def test_a_second_trainer_fails_naming_the_holder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from vlmjax.train.workdir import WorkdirLock
        with WorkdirLock({str(tmp_path)!r}):
            print("locked", flush=True)
            time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(WorkdirBusyError, match=rf"PID {holder.pid}\b"), WorkdirLock(str(tmp_path)):
            pass
    finally:
        holder.kill()  # SIGKILL: the kernel releases the lock
        holder.wait()
    with WorkdirLock(str(tmp_path)):  # no stale lock after the holder died
        pass


def test_the_train_command_exits_2_on_a_busy_workdir(tmp_path, synthetic_data_dir):
    with WorkdirLock(str(tmp_path)):
        result = subprocess.run(
            [sys.executable, "-m", "vlmjax.train", "--config",
             os.path.join(REPO, "configs", "test", "tiny_clip.py"), "--workdir", str(tmp_path),
             f"--config.data.dir={synthetic_data_dir}"],
            capture_output=True, text=True, cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert result.returncode == 2
    assert f"another trainer (PID {os.getpid()})" in result.stderr


def test_allowed_changes_are_recorded_and_reevaluation_adds_no_rows(trained_run, tmp_path):
    config, trained, _ = trained_run
    workdir = str(tmp_path / "run")
    shutil.copytree(trained, workdir)
    with open(os.path.join(workdir, "config.json")) as f:
        saved = f.read()
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        before = [json.loads(line) for line in f]
    again = ml_collections.ConfigDict(config.to_dict())
    again.train.log_every = 7  # how often to log: not what the model learns
    train(again, workdir)  # finished: evaluates step 40 again
    with open(os.path.join(workdir, "config.json")) as f:
        assert f.read() == saved
    with open(os.path.join(workdir, "config_changes.jsonl")) as f:
        entries = [json.loads(line) for line in f]
    assert entries[-1]["changes"] == {"train.log_every": {"from": 5, "to": 7}}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        after = [json.loads(line) for line in f]
    evals = lambda rows: [r for r in rows if any("/acc1" in k for k in r)]  # noqa: E731
    assert len(evals(after)) == len(evals(before))  # step 40's evaluation replaced, not added
    assert evals(after)[-1]["step"] == 40


def test_without_a_terminal_the_loop_logs_a_line_per_log_every(trained_run, tmp_path):
    _, trained, _ = trained_run
    workdir = str(tmp_path / "run")
    shutil.copytree(trained, workdir)
    result = subprocess.run(
        [sys.executable, "-m", "vlmjax.train", "--workdir", workdir,
         "--config.train.num_steps=50", "--config.train.log_every=5"],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if " loss " in line]
    assert [line.split("step ")[1].split()[0] for line in lines] == ["45/50", "50/50"]
    assert "\r" not in result.stderr and "\x1b[" not in result.stderr  # no progress-bar redraws
