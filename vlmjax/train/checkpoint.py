"""Orbax checkpoints of the train state plus the data iterator state, written atomically.

Orbax writes each step into a temporary directory and renames it once complete, so a crash
mid-save leaves the previous checkpoint as the latest readable one.
"""

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from vlmjax.errors import CheckpointError
from vlmjax.train.param_groups import map_with_path, path_string


def _param_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """'params/...' path -> shape, for arrays or array metadata."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    shapes = {path_string(p): tuple(x.shape) for p, x in flat}
    return {k: v for k, v in shapes.items() if k.startswith("params/")}


class Checkpointer:
    """Saves (async) when asked, keeps the last `keep`, restores by step."""

    def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True,
                 read_only: bool = False):
        self.directory = os.path.abspath(directory)
        if read_only and not os.path.isdir(self.directory):
            raise CheckpointError(f"no checkpoint in {self.directory}; train first with "
                                  "`python -m vlmjax.train --config ... --workdir WORKDIR`")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None if read_only else keep, save_interval_steps=0 if read_only else 1,
            create=not read_only,
            enable_async_checkpointing=async_save, cleanup_tmp_directories=not read_only,
            read_only=read_only)
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_names=("state", "data"))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, data_state: dict) -> None:
        """Starts writing `state` and the iterator state at `step` (returns once on host)."""
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=True)

    def restore(self, step: int | None, abstract_state: Any) -> tuple[Any, dict, int]:
        """(state, iterator state, step) at `step` (latest if None), laid out as `abstract_state`."""
        steps = self.all_steps()
        if step is None:
            step = self.latest_step()
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}; train first with "
                                  "`python -m vlmjax.train --config ... --workdir WORKDIR`")
        if step not in steps:
            raise CheckpointError(f"no checkpoint for step {step} in {self.directory}; "
                                  f"available steps: {steps}")
        self._check_params_match(step, abstract_state)
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        except (ValueError, KeyError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"checkpoint {step} in {self.directory} does not match the "
                                  f"config's model: {first[:300]}") from e
        return restored["state"], restored["data"], step

    def data_state(self, step: int) -> dict:
        """The iterator state saved with `step` ({} for imported weights: no data position)."""
        return self._manager.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore()))["data"]

    def restore_params(self, step: int, abstract_params: Any, shardings: Any) -> Any:
        """Only the parameters of `step`, placed with `shardings`: for starting a new optimizer
        (fine-tuning or LiT from imported weights, whatever optimizer state was saved)."""
        self._check_params_match(step, {"params": abstract_params})
        stored = ocp.StandardCheckpointer().restore(os.path.join(self.directory, str(step), "state"))
        # Restored without a target, list indices come back as string keys: match by path.
        by_path = {path_string(p): x for p, x in
                   jax.tree_util.tree_flatten_with_path(stored["params"])[0]}
        return jax.device_put(map_with_path(lambda path, _: by_path[path], abstract_params), shardings)

    def _check_params_match(self, step: int, abstract_state: Any) -> None:
        """Names the first parameter whose presence or shape differs from the config's model."""
        path = os.path.join(self.directory, str(step), "state")
        stored = _param_shapes(ocp.StandardCheckpointer().metadata(path).item_metadata)
        wanted = _param_shapes(abstract_state)
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
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
