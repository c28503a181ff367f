"""Image-text loader worker processes die with the trainer, even on SIGKILL, and leave no shared
memory behind; normal exits print no resource_tracker leak warning."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, TINY_CONFIG
from tests.test_web_data import write_tars
from vlmjax.data.idx import read_idx
from vlmjax.data.prepare import main as prepare_main
from vlmjax.tokenizers.trained_bpe import train_bpe

CONFIG = """
from vlmjax.config import load_config_file, select

def get_config():
    c = load_config_file({tiny!r})
    select(c, "data.name", "image_text")
    c.data.web.sources = ("prepared:{prepared}",)
    c.data.web.num_workers = 2
    c.data.image_mean = c.data.image_std = 0.5
    c.tokenizer.kind, c.tokenizer.path = "hf_json", {tokenizer!r}
    c.model.image.update(image_size=16, channels=3, patch_size=8)
    c.train.update(batch_size=8, num_steps={steps}, log_every=1, checkpoint_every=100000)
    c.evals = type(c.evals)()
    return c
"""

# A script reading batches in 2 worker processes that keeps the last ones until it exits (as a
# notebook or an analysis script does) and never closes the loader.
SCRIPT = """
import sys
import absl.flags
from vlmjax.data.image_text_pipeline import ImageTextIterator, image_text_dataset
from vlmjax.data.image_text_sources import SourceSpec
from vlmjax.data.image_text_transform import ImageTextTransform
from vlmjax.tokenizers import load_tokenizer

if __name__ == "__main__":
    absl.flags.FLAGS.mark_as_parsed()
    it = ImageTextIterator(image_text_dataset(
        [SourceSpec("prepared", sys.argv[1])], ImageTextTransform(16), load_tokenizer(sys.argv[2]),
        12, 8, seed=0, num_workers=2))
    batches = [next(it) for _ in range(6)]
    assert all(b["image"].shape == (8, 16, 16, 3) for b in batches)
    print("read", len(batches))
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory, synthetic_data_dir) -> dict:
    """Prepared image-text shards, a tokenizer, and a config factory for a tiny CLIP on them
    with 2 loader worker processes."""
    root = tmp_path_factory.mktemp("workers")
    images = read_idx(os.path.join(synthetic_data_dir, "train-images-idx3-ubyte.gz"))
    tars = write_tars(str(root / "tars"), images, "alpha", shards=2)
    assert prepare_main(["--tar", tars, "--output_dir", str(root / "prepared"),
                         "--num_workers", "1"]) == 0
    train_bpe([f"alpha picture number {i}" for i in range(200)], 600).save(str(root / "tok"))

    def config(steps: int) -> str:
        path = root / f"config_{steps}.py"
        path.write_text(CONFIG.format(tiny=TINY_CONFIG, prepared=root / "prepared", steps=steps,
                                      tokenizer=str(root / "tok" / "tokenizer.json")))
        return str(path)
    return {"prepared": str(root / "prepared"), "tokenizer": str(root / "tok"), "config": config}


def environment() -> dict:
    return {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": "--xla_force_host_platform_device_count=8 "
                         "--xla_backend_optimization_level=0"}


def start_training(config: str, workdir: str, stderr) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vlmjax.train", "--config", config,
                             "--workdir", workdir], cwd=REPO, env=environment(),
                            stdout=subprocess.DEVNULL, stderr=stderr)


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state, parent pid, ...), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def worker_children(pid: int) -> set[int]:
    """The multiprocessing-spawned children of `pid` (grain's workers; not its resource
    tracker, which multiprocessing starts with `-c`)."""
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) and int(stat[1]) == pid:
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if b"spawn_main" in f.read():
                        out.add(int(entry))
            except OSError:
                pass
    return out


def alive(pid: int) -> bool:
    """Running: a zombie (dead, not yet reaped by whoever adopted it) holds no memory."""
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def shm_segments() -> set[str]:
    """What is in /dev/shm: shared memory segments (`psm_*`, the batches) and named semaphores
    (`sem.mp-*`, multiprocessing's queues); nothing where there is no /dev/shm."""
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


def lingering(candidates: set[str], seconds: float) -> set[str]:
    """Those of `candidates` still in /dev/shm at every look for `seconds` (other processes on
    the machine may create and remove segments meanwhile: those come and go)."""
    left = candidates & shm_segments()
    deadline = time.monotonic() + seconds
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left &= shm_segments()
    return left


@pytest.mark.skipif(not os.path.isdir("/proc") or not os.path.isdir("/dev/shm"),
                    reason="reads /proc and /dev/shm (Linux)")
def test_workers_and_shared_memory_die_with_a_sigkilled_trainer(tmp_path, data):
    before = shm_segments()
    workers: set[int] = set()
    with open(tmp_path / "stderr.txt", "wb") as err:
        proc = start_training(data["config"](100000), str(tmp_path / "run"), err)
    try:
        metrics = tmp_path / "run" / "metrics.jsonl"
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            workers = worker_children(proc.pid)
            if len(workers) >= 2 and metrics.exists() and metrics.read_text().count("\n") >= 3:
                break  # training, with batches flowing through shared memory
            time.sleep(0.2)
        assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()[-3000:]
        assert len(workers) >= 2, "the trainer started no worker processes"
        during = shm_segments() - before
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed = time.monotonic()
        while time.monotonic() < killed + 5 and any(alive(p) for p in workers):
            time.sleep(0.05)
        left = [p for p in workers if alive(p)]
        assert not left, f"worker processes {left} outlived the SIGKILLed trainer by 5 s"
        # The segments in flight when it died (created by a worker, not yet received) are
        # removed by multiprocessing's resource tracker once the last worker is gone.
        left_shm = lingering((during | shm_segments()) - before, 5)
        assert not left_shm, f"shared memory outlived the trainer: {sorted(left_shm)}"
    finally:
        if proc.poll() is None:
            proc.kill()
        for p in workers:
            if alive(p):
                os.kill(p, signal.SIGKILL)


def test_a_script_holding_batches_exits_without_leaking_shared_memory(tmp_path, data):
    before = shm_segments()
    (tmp_path / "script.py").write_text(SCRIPT)
    done = subprocess.run([sys.executable, str(tmp_path / "script.py"), data["prepared"],
                           data["tokenizer"]], cwd=REPO, env=environment(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and "read 6" in done.stdout, done.stderr[-3000:]
    for noise in ("leaked shared_memory", "resource_tracker", "Exception ignored"):
        assert noise not in done.stderr, done.stderr[-3000:]
    assert not lingering(shm_segments() - before, 2)


def test_a_finished_training_run_prints_no_leak_warning(tmp_path, data):
    before = shm_segments()
    with open(tmp_path / "stderr.txt", "wb") as err:
        proc = start_training(data["config"](4), str(tmp_path / "run"), err)
        assert proc.wait(timeout=300) == 0, (tmp_path / "stderr.txt").read_text()[-3000:]
    stderr = (tmp_path / "stderr.txt").read_text()
    for noise in ("leaked shared_memory", "resource_tracker", "Exception ignored"):
        assert noise not in stderr, stderr[-3000:]
    assert not lingering(shm_segments() - before, 2)
