"""Shared fixtures: 8 virtual CPU devices, a synthetic dataset, the tiny test config."""

import os

# Every test runs on a mesh of 8 virtual devices, so sharded code paths are always exercised.
# Tests of tiny models are compile-bound: LLVM -O0 roughly halves XLA:CPU compile time and
# leaves the HLO (what the tests check) unchanged.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                                   "--xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Command-line entry points called in-process (vlmjax.convert.main, ...) would otherwise point
# this process at the user's persistent compilation cache for every later test.
os.environ.setdefault("VLMJAX_NO_COMPILATION_CACHE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from vlmjax.data.idx import write_idx  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG = os.path.join(REPO, "configs", "test", "tiny_clip.py")


def write_split(directory: str, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    """Fashion-MNIST-format IDX files of one split ("train" or "t10k") in `directory`."""
    write_idx(os.path.join(directory, f"{split}-images-idx3-ubyte.gz"), images.astype(np.uint8))
    write_idx(os.path.join(directory, f"{split}-labels-idx1-ubyte.gz"), labels.astype(np.uint8))


def synthetic_fashion_mnist(directory: str, n_train: int = 640, n_test: int = 200,
                            seed: int = 0) -> str:
    """Fashion-MNIST-format IDX files whose classes are learnable: class k lights band k."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        rng.shuffle(labels)
        images = rng.integers(0, 60, size=(n, 28, 28)).astype(np.uint8)
        for i, k in enumerate(labels):
            images[i, 2 * k + 4: 2 * k + 7, 3:25] = 230
        write_split(directory, split, images, labels)
    return directory


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return synthetic_fashion_mnist(str(tmp_path_factory.mktemp("fashion_mnist")))


@pytest.fixture
def tiny_config(synthetic_data_dir: str):
    from vlmjax.config import load_config_file
    config = load_config_file(TINY_CONFIG)
    config.data.dir = synthetic_data_dir
    return config


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, synthetic_data_dir):
    """A tiny CLIP trained 40 steps (evaluated at 20 and 40): (config, workdir, results).
    Shared by test_train and the transfer tests; tests that write into it copy it first."""
    from vlmjax.config import load_config_file
    from vlmjax.train.loop import train
    config = load_config_file(TINY_CONFIG)
    config.data.dir = synthetic_data_dir
    config.train.num_steps = 40
    config.train.eval_every = 20
    workdir = str(tmp_path_factory.mktemp("run"))
    results = train(config, workdir)
    return config, workdir, results
