"""Orbax checkpoints of the train state plus the data iterator state, crash-safe.

- Orbax writes each step into a temporary directory and renames it once complete (its commit),
  so a crash mid-save leaves the previous checkpoint as the newest one.
- Our own pointer, checkpoints/LATEST, names the newest step whose save finished; it moves only
  after that, atomically. Readers of a run still being written (evaluate) take the newest
  checkpoint at or below it; the trainer also tries newer commits (a crash can fall between
  orbax's commit and the pointer).
- Restoring verifies: a checkpoint that cannot be read or holds a non-finite value is reported
  and skipped for the previous one (and moved to checkpoints.corrupt/ once that one restores).
- Old checkpoints are deleted (beyond `keep`) only after a newer save finished, never the
  pointer's; a state with a non-finite value is never saved.
"""

import logging
import os
import re
import shutil
import time
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from vlmjax.errors import CheckpointError, TrainingError
from vlmjax.train.param_groups import map_with_path, path_string

log = logging.getLogger(__name__)

LATEST_FILE = "LATEST"
_TRAIN_FIRST = "train first with `python -m vlmjax.train --config ... --workdir WORKDIR`"


def _param_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """'params/...' path -> shape, for arrays or array metadata."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    shapes = {path_string(p): tuple(x.shape) for p, x in flat}
    return {k: v for k, v in shapes.items() if k.startswith("params/")}


@jax.jit
def all_finite(tree: Any) -> jax.Array:
    """True when no floating-point leaf of `tree` holds a NaN or an infinity."""
    leaves = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.stack(leaves).all() if leaves else jnp.bool_(True)


# Where a message turns into a dump of a C++ object: tensorstore's "See full TensorStore details:
# <bound method pybind11...spec of TensorStore({...", or any "<... object at 0x...>" repr.
_OBJECT_DUMP = re.compile(r"\s*(See full TensorStore details:|<bound method |<[\w.]+ object at 0x).*$")


def _first_line(error: BaseException) -> str:
    """The error's first line, cut where it starts printing a C++ object."""
    text = str(error).strip()
    line = _OBJECT_DUMP.sub("", text.splitlines()[0]) if text else ""
    return line[:300]


def _reason(error: BaseException) -> str:
    """Why reading failed, in one line: the innermost explicit cause that says something
    (tensorstore's wrapper says only 'error while reading array index'; its cause names the
    file and the value)."""
    reasons, cause, seen = [], error, set()
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if line := _first_line(cause):
            reasons.append(line)
        cause = cause.__cause__
    return reasons[-1] if reasons else type(error).__name__


def checkpoint_bytes(abstract_state: Any) -> int:
    """Bytes one checkpoint of `abstract_state` (ShapeDtypeStructs) takes, uncompressed."""
    return sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(abstract_state))


class Checkpointer:
    """Saves (async) when asked, keeps the last `keep`, restores the newest readable one."""

    def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True,
                 read_only: bool = False):
        self.directory = os.path.abspath(directory)
        if read_only and not os.path.isdir(self.directory):
            raise CheckpointError(f"no checkpoint in {self.directory}; {_TRAIN_FIRST}")
        # max_to_keep=None: old steps are deleted here, only once a newer save has finished.
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None, save_interval_steps=0 if read_only else 1, create=not read_only,
            enable_async_checkpointing=async_save, cleanup_tmp_directories=not read_only,
            read_only=read_only)
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_names=("state", "data"))
        self._keep, self._read_only, self._pending = keep, read_only, None

    def pointer_step(self) -> int | None:
        """The step in checkpoints/LATEST (the newest finished save), None without one."""
        try:
            with open(os.path.join(self.directory, LATEST_FILE)) as f:
                return int(f.read().strip())
        except (FileNotFoundError, ValueError):
            return None

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def candidate_steps(self) -> list[int]:
        """Steps to resume from, newest first: a reader stops at the pointer (anything newer
        may still be in flight); the trainer (no other writer) also tries newer commits."""
        steps, pointer = self.all_steps(), self.pointer_step()
        if self._read_only and pointer is not None:
            steps = [s for s in steps if s <= pointer]
        return steps[::-1]

    def latest_step(self) -> int | None:
        """The newest candidate step (not yet verified: `restore` does that)."""
        steps = self.candidate_steps()
        return steps[0] if steps else None

    def save(self, step: int, state: Any, data_state: dict) -> None:
        """Starts writing `state` and the iterator state at `step` (returns once on host).

        The previous save is finished first (then the pointer moves and old steps go). A
        state with a non-finite value is refused with a TrainingError.
        """
        self.finish_pending()
        if not bool(all_finite(state)):
            raise TrainingError(f"the train state at step {step} holds a non-finite value, so it "
                                f"is not saved; {self.last_good_message()}")
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=True)
        self._pending = step

    def finish_pending(self) -> None:
        """Waits for the save in flight; once it is complete, points LATEST at it and deletes
        the steps beyond `keep` (never the one LATEST names)."""
        self._manager.wait_until_finished()
        step, self._pending = self._pending, None
        if step is None:
            return
        if step not in self._manager.all_steps():
            raise CheckpointError(f"the checkpoint of step {step} is missing from {self.directory} "
                                  "after its save finished; check the storage")
        if jax.process_index() == 0:
            self._write_pointer(step)
        for old in self.all_steps()[:-self._keep]:
            if old != step:
                self._manager.delete(old)

    def _write_pointer(self, step: int) -> None:
        path = os.path.join(self.directory, LATEST_FILE)
        with open(path + ".tmp", "w") as f:
            f.write(f"{step}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(path + ".tmp", path)  # readers see the old or the new step, never half

    def last_good_message(self) -> str:
        """Where to resume from: the pointer's step, for error messages."""
        step = self.pointer_step()
        if step is None:
            steps = self.all_steps()
            step = steps[-1] if steps else None
        if step is None:
            return f"there is no checkpoint yet in {self.directory}"
        return f"the last good checkpoint is step {step} in {self.directory}"

    def restore(self, step: int | None, abstract_state: Any) -> tuple[Any, dict, int]:
        """(state, iterator state, step) at `step`, laid out as `abstract_state`.

        With step=None, the newest candidate that reads back whole and finite; each one that
        does not is reported and skipped for the previous one.
        """
        if step is not None:
            if step not in self.all_steps():
                raise CheckpointError(f"no checkpoint for step {step} in {self.directory}; "
                                      f"available steps: {self.all_steps()}")
            try:
                state, data = self._restore_verified(step, abstract_state)
            except _UnreadableError as e:
                raise CheckpointError(f"checkpoint {step} in {self.directory} cannot be restored: "
                                      f"{e}; pick another step ({self.all_steps()})") from e
            return state, data, step
        candidates = self.candidate_steps()
        if not candidates:
            raise CheckpointError(f"no checkpoint in {self.directory}; {_TRAIN_FIRST}")
        failed: list[tuple[int, str]] = []
        first_mismatch = None
        for candidate in candidates:
            try:
                state, data = self._restore_verified(candidate, abstract_state)
            except _UnreadableError as e:
                log.warning("checkpoint %d in %s is incomplete or corrupt (%s); trying the "
                            "previous one", candidate, self.directory, e)
                failed.append((candidate, str(e)))
                continue
            except CheckpointError as e:
                # Readable but unlike the config's model: an older step of the run may match.
                first_mismatch = first_mismatch or e
                log.warning("%s; trying the previous one", e)
                failed.append((candidate, str(e)))
                continue
            self._set_aside([s for s, _ in failed])
            return state, data, candidate
        if first_mismatch is not None:  # a readable checkpoint and the config disagree
            raise first_mismatch
        raise CheckpointError(
            f"every checkpoint in {self.directory} is unreadable (" + "; ".join(
                f"step {s}: {why}" for s, why in failed) + "): their files are damaged or "
            "incomplete, not the config; restore them from a copy, or start a new --workdir")

    def _restore_verified(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """Restores `step`; _UnreadableError when its files are damaged or it holds a non-finite value,
        CheckpointError when it does not match the config's model."""
        self._check_params_match(step, abstract_state)
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        except Exception as e:  # tensorstore, JSON and orbax errors of damaged files alike
            raise _UnreadableError(_reason(e)) from e
        if not bool(all_finite(restored["state"])):
            raise _UnreadableError("it holds a non-finite value")
        return restored["state"], restored["data"]

    def _set_aside(self, steps: list[int]) -> None:
        """Moves unreadable steps (newer than the one restored) to checkpoints.corrupt/, so a
        new save of the same step can happen and the files stay for inspection."""
        if not steps or self._read_only:
            return
        if jax.process_index() == 0:
            target = f"{self.directory}.corrupt"
            os.makedirs(target, exist_ok=True)
            for step in steps:
                dest = os.path.join(target, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
                shutil.move(os.path.join(self.directory, str(step)), dest)
                log.warning("moved the unreadable checkpoint %d to %s", step, dest)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("vlmjax_checkpoint_set_aside")
        self._manager.reload()

    def data_state(self, step: int) -> dict:
        """The iterator state saved with `step` ({} for imported weights: no data position)."""
        return self._manager.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore()))["data"]

    def restore_params(self, step: int, abstract_params: Any, shardings: Any) -> Any:
        """Only the parameters of `step`, placed with `shardings`: for starting a new optimizer
        (fine-tuning or LiT from imported weights, whatever optimizer state was saved)."""
        try:
            self._check_params_match(step, {"params": abstract_params})
        except _UnreadableError as e:
            raise CheckpointError(f"checkpoint {step} in {self.directory} cannot be read: {e}") from e
        try:
            stored = ocp.StandardCheckpointer().restore(os.path.join(self.directory, str(step),
                                                                     "state"))
        except Exception as e:  # tensorstore, JSON and orbax errors of damaged files alike
            raise CheckpointError(f"checkpoint {step} in {self.directory} cannot be read: "
                                  f"{_reason(e)}; restore its files or import the weights "
                                  "again") from e
        # Restored without a target, list indices come back as string keys: match by path.
        by_path = {path_string(p): x for p, x in
                   jax.tree_util.tree_flatten_with_path(stored["params"])[0]}
        return jax.device_put(map_with_path(lambda path, _: by_path[path], abstract_params), shardings)

    def _check_params_match(self, step: int, abstract_state: Any) -> None:
        """Names the first parameter whose presence or shape differs from the config's model."""
        path = os.path.join(self.directory, str(step), "state")
        try:
            stored = _param_shapes(ocp.StandardCheckpointer().metadata(path).item_metadata)
        except Exception as e:  # a missing or damaged metadata file
            raise _UnreadableError(f"its metadata cannot be read: {_reason(e)}") from e
        wanted = _param_shapes(abstract_state)
        if wanted and not stored:  # orbax logs a damaged metadata file and returns nothing
            raise _UnreadableError("its metadata lists no parameters (state/_METADATA or the "
                                   "OCDBT files under state/ are damaged or missing)")
        fix = "use the config the run was trained with (workdir/config.json) or a new --workdir"
        for name, shape in wanted.items():
            if name not in stored:
                raise CheckpointError(f"checkpoint {step} in {self.directory} has no parameter "
                                      f"{name} that the config's model has; {fix}")
            if stored[name] != shape:
                raise CheckpointError(f"checkpoint {step} in {self.directory}: {name} has shape "
                                      f"{stored[name]} but the config's model needs {shape}; {fix}")
        extra = sorted(set(stored) - set(wanted))
        if extra:
            raise CheckpointError(f"checkpoint {step} in {self.directory} has parameter {extra[0]} "
                                  f"that the config's model lacks; {fix}")

    def close(self) -> None:
        self.finish_pending()
        self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _UnreadableError(Exception):
    """A checkpoint's files are incomplete or damaged (internal: `restore` skips it)."""
