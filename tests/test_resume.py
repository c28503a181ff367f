"""Exact resume: SIGKILL mid-run, restart, and end with the parameters of an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

from tests.conftest import REPO, TINY_CONFIG

STEPS = 120  # kill after step 50, resume from the checkpoint at 40


def _command(workdir: str, data_dir: str) -> list[str]:
    return [sys.executable, "-m", "vlmjax.train", "--config", TINY_CONFIG, "--workdir", workdir,
            f"--config.data.dir={data_dir}", f"--config.train.num_steps={STEPS}",
            "--config.train.checkpoint_every=20", "--config.train.log_every=10",
            "--config.data.flip=true", "--config.data.translate=2"]


def _env(cache_dir: str) -> dict:
    """8 CPU devices; the three runs share a persistent compilation cache, so only the first
    one compiles (the programs are identical)."""
    return {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
            "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": cache_dir,
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def _logged_steps(workdir: str) -> list[int]:
    """Steps of the training rows of metrics.jsonl (a line being written is ignored)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip().endswith("}")]
    return [r["step"] for r in rows if "loss" in r]


def _final_params(workdir: str) -> dict:
    path = os.path.join(workdir, "checkpoints", str(STEPS), "state")
    return ocp.StandardCheckpointer().restore(path)["params"]


def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path, synthetic_data_dir):
    reference, interrupted = str(tmp_path / "reference"), str(tmp_path / "interrupted")
    env = _env(str(tmp_path / "compilation_cache"))
    subprocess.run(_command(reference, synthetic_data_dir), cwd=REPO, env=env, check=True,
                   capture_output=True, timeout=600)

    proc = subprocess.Popen(_command(interrupted, synthetic_data_dir), cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    # Kill once a checkpoint is committed and training has moved past it.
    while time.time() < deadline and proc.poll() is None:
        steps = _logged_steps(interrupted)
        if steps and steps[-1] >= 50 and steps[-1] % 20:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = _logged_steps(interrupted)[-1]
    assert killed_at < STEPS

    resumed = subprocess.run(_command(interrupted, synthetic_data_dir), cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from step" in resumed.stderr

    want, got = _final_params(reference), _final_params(interrupted)
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(want)[0], jax.tree.leaves(got),
                            strict=True):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
    # The metrics log has each step once: lines after the restored checkpoint were replaced.
    assert _logged_steps(interrupted) == list(range(10, STEPS + 1, 10))
