"""Shared by the launcher tests (local.sh, SLURM): a tiny config without evaluators, the
environment of CPU runs, and a bit-for-bit comparison of two runs' final parameters."""

import json
import os
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

from tests.conftest import REPO, TINY_CONFIG


def no_evals_config(directory: str) -> str:
    """The tiny CLIP without its zero-shot evaluator (launcher tests only train)."""
    path = os.path.join(directory, "tiny_no_evals.py")
    with open(path, "w") as f:
        f.write("from vlmjax.config import load_config_file\n\n\ndef get_config():\n"
                f"    c = load_config_file({TINY_CONFIG!r})\n"
                "    del c.evals['zeroshot']\n    return c\n")
    return path


def cpu_env(cache_dir: str, base: dict | None = None) -> dict:
    """One virtual CPU device per process, a shared compilation cache, no inherited job variables."""
    env = {k: v for k, v in (os.environ if base is None else base).items()
           if not k.startswith(("SLURM_", "VLMJAX_", "TPU_"))}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_backend_optimization_level=0",
               VLMJAX_DEVICES_PER_PROCESS="1", VLMJAX_SKIP_SETUP="1", VLMJAX_LOG_LEVEL="INFO",
               JAX_COMPILATION_CACHE_DIR=cache_dir, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0", PYTHONPATH=REPO)
    return env


def logged_steps(workdir: str) -> list[int]:
    """Steps of the training rows in metrics.jsonl so far (a line being written is ignored)."""
    path = os.path.join(workdir, "metrics.jsonl")
    try:
        with open(path) as f:
            rows = [json.loads(line) for line in f if line.strip().endswith("}")]
    except FileNotFoundError:
        return []
    return [r["step"] for r in rows if "loss" in r]


def wait_until(condition, timeout: float, what: str, still_going=lambda: True) -> None:
    """Polls `condition` until true; AssertionError after `timeout` or once `still_going` is false."""
    deadline = time.time() + timeout
    while time.time() < deadline and still_going():
        if condition():
            return
        time.sleep(0.05)
    if not condition():
        raise AssertionError(f"timed out waiting for {what}")


def latest(workdir: str) -> int:
    with open(os.path.join(workdir, "checkpoints", "LATEST")) as f:
        return int(f.read())


def final_params(workdir: str, step: int) -> dict:
    """The parameters of the checkpoint of `step`, on this process's first device."""
    path = os.path.join(workdir, "checkpoints", str(step), "state")
    checkpointer = ocp.StandardCheckpointer()
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          checkpointer.metadata(path).item_metadata.tree)
    return jax.device_get(checkpointer.restore(path, target)["params"])


def assert_same_params(workdir: str, reference: str, step: int) -> None:
    """Bit-for-bit equal parameters: the same program, interrupted and resumed or not."""
    want, got = final_params(reference, step), final_params(workdir, step)
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(want)[0], jax.tree.leaves(got),
                            strict=True):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
