"""Every checkpoint of a run damaged: the error says the files are unreadable (not that the config
mismatches), names each step's reason in one clean line, and a true mismatch still names the
parameter. Checkpoints of a small state are written by `Checkpointer` and damaged on disk."""

import glob
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlmjax.errors import CheckpointError
from vlmjax.train.checkpoint import Checkpointer

# When one array cannot be read, orbax abandons the other reads in flight; each reports the same
# failure again when collected (the command-line tools drop these: cli.quiet_abandoned_reads).
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

STEPS = (1, 2)
# What must never reach a user: a pybind/tensorstore object dump.
OBJECT_DUMPS = ("pybind11", "<bound method", "TensorStore({", " object at 0x")


def _state() -> dict:
    # w is random (8 KB after compression), so its bytes live in their own OCDBT data file
    # rather than inline in the B-tree nodes that hold the metadata.
    w = np.random.default_rng(0).normal(size=(64, 32)).astype(np.float32)
    return {"params": {"w": jnp.asarray(w), "b": jnp.zeros(32)}, "step": jnp.int32(3)}


def _abstract(state: dict) -> dict:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> str:
    directory = str(tmp_path_factory.mktemp("checkpoints") / "checkpoints")
    with Checkpointer(directory) as ckpt:
        for step in STEPS:
            ckpt.save(step, _state(), {"position": step})
    return directory


def _damaged_copy(saved: str, tmp_path, part: str) -> str:
    """A copy of the checkpoints with every file whose path contains `part` cut to half."""
    directory = str(tmp_path / "checkpoints")
    shutil.copytree(saved, directory)
    damaged = 0
    for step in STEPS:
        for path in glob.glob(os.path.join(directory, str(step), "**"), recursive=True):
            if os.path.isfile(path) and part in os.path.relpath(path, directory):
                with open(path, "r+b") as f:
                    f.truncate(os.path.getsize(path) // 2)
                damaged += 1
    assert damaged >= len(STEPS)
    return directory


def _restore_error(directory: str, abstract: dict, caplog) -> tuple[str, str]:
    """(the CheckpointError's message, the warnings logged on the way)."""
    with (caplog.at_level(logging.WARNING, logger="vlmjax.train.checkpoint"),
          Checkpointer(directory) as ckpt, pytest.raises(CheckpointError) as error):
        ckpt.restore(None, abstract)
    warnings = "\n".join(r.getMessage() for r in caplog.records
                         if r.name == "vlmjax.train.checkpoint")
    return str(error.value), warnings


def _assert_unreadable(message: str, directory: str) -> None:
    assert message.startswith(f"every checkpoint in {directory} is unreadable ("), message
    for step in STEPS:
        assert f"step {step}: " in message
    assert "not the config" in message and "start a new --workdir" in message
    assert "that the config's model has" not in message  # not blamed on the config
    assert "\n" not in message


def test_every_checkpoint_with_damaged_metadata_is_reported_unreadable(saved, tmp_path, caplog):
    # Every file of every step cut to half, metadata included: orbax logs the damaged metadata
    # and returns none, which read as "the config's model has a parameter the checkpoint lacks".
    directory = _damaged_copy(saved, tmp_path, "")
    message, warnings = _restore_error(directory, _abstract(_state()), caplog)
    _assert_unreadable(message, directory)
    assert "metadata" in message
    for step in STEPS:
        assert f"checkpoint {step} in {directory} is incomplete or corrupt" in warnings


def test_every_checkpoint_with_damaged_arrays_gives_clean_reasons(saved, tmp_path, caplog):
    # The metadata reads back; the arrays' data files do not. tensorstore's error embeds the
    # repr of a pybind object spanning dozens of lines; its cause names the array and the file.
    directory = _damaged_copy(saved, tmp_path, os.path.join("ocdbt.process_0", "d", ""))
    message, warnings = _restore_error(directory, _abstract(_state()), caplog)
    for text in (message, warnings):
        assert not any(dump in text for dump in OBJECT_DUMPS), text
    _assert_unreadable(message, directory)
    assert "metadata" not in message
    assert all(len(line) < 600 for line in warnings.splitlines())


def test_a_readable_checkpoint_unlike_the_config_names_the_parameter(saved, tmp_path, caplog):
    directory = str(tmp_path / "checkpoints")
    shutil.copytree(saved, directory)
    other = _abstract(_state())
    other["params"]["w"] = jax.ShapeDtypeStruct((32, 64), jnp.float32)
    message, _ = _restore_error(directory, other, caplog)
    assert message.startswith(f"checkpoint 2 in {directory}: params/w has shape (64, 32) but the "
                              "config's model needs (32, 64)"), message


def test_the_newest_damaged_and_an_older_readable_one_restores_the_older(saved, tmp_path):
    directory = str(tmp_path / "checkpoints")
    shutil.copytree(saved, directory)
    for path in glob.glob(os.path.join(directory, "2", "**"), recursive=True):
        if os.path.isfile(path):
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)
    with Checkpointer(directory) as ckpt:
        state, data, step = ckpt.restore(None, _abstract(_state()))
    assert step == 1 and data == {"position": 1}
    np.testing.assert_array_equal(np.asarray(state["params"]["w"]),
                                  np.asarray(_state()["params"]["w"]))
