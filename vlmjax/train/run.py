"""A run directory as one object: the one loader evaluation, captioning and export use, and the
one writer imports use (`interop` reaches runs only through here).

A run directory holds config.json (every key the run used), tokenizer/ (its saved tokenizer)
and checkpoints/ (orbax steps and the LATEST pointer).
"""

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from vlmjax.errors import CheckpointError
from vlmjax.models.stacked import unstack_layer_params
from vlmjax.parallel.mesh import make_mesh
from vlmjax.tokenizers import Tokenizer, load_tokenizer
from vlmjax.train.checkpoint import Checkpointer
from vlmjax.train.param_groups import map_with_path, path_string
from vlmjax.train.state import StateLayout, merge_model, model_builder, state_layout, weights
from vlmjax.train.workdir import load_saved_config, save_config

TOKENIZER_DIR, CHECKPOINT_DIR = "tokenizer", "checkpoints"


@dataclasses.dataclass
class Run:
    """A restored run: its config, tokenizer, model layout and the state of one step."""

    workdir: str
    config: dict
    tokenizer: Tokenizer
    layout: StateLayout
    mesh: Mesh
    step: int
    state: dict

    @property
    def params(self) -> dict:
        return self.state["params"]

    @property
    def model_state(self) -> dict | None:
        return self.state.get("model_state")

    @property
    def weights(self) -> dict:
        """Parameters and model state in one tree: what evaluators take."""
        return weights(self.state)

    @property
    def graphdef(self) -> Any:
        return self.layout.graphdef

    def model(self) -> nnx.Module:
        """The model module with this step's parameters (for eager use; jit `merge_model`)."""
        return merge_model(self.graphdef, self.params, self.model_state)


def load_run(workdir: str, step: int | None = None, *,
             config: ml_collections.ConfigDict | Mapping | None = None,
             devices: Sequence[jax.Device] | None = None) -> Run:
    """Restores checkpoint `step` (latest readable if None) of the run in `workdir`, read-only.

    `config`: the config to build the model from (default: the run's config.json, e.g. with
    overrides applied); `devices`: a subset to restore onto (a one-device mesh), else the
    config's mesh over all devices.
    """
    if config is None:
        config = load_saved_config(workdir)
    cfg = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
    with Checkpointer(os.path.join(workdir, CHECKPOINT_DIR), read_only=True) as ckpt:
        if ckpt.latest_step() is None:  # fail before building anything
            raise CheckpointError(f"no checkpoint in {ckpt.directory}; train first with "
                                  "`python -m vlmjax.train --config ... --workdir WORKDIR`")
        tokenizer = run_tokenizer(workdir)
        mesh = (make_mesh({axis: 1 for axis in cfg["mesh"]}, devices) if devices is not None
                else make_mesh(cfg["mesh"]))
        layout = state_layout(cfg, tokenizer.vocab_size, cfg["tokenizer"]["context_length"], mesh)
        state, _, step = ckpt.restore(step, layout.abstract)
    return Run(workdir=workdir, config=cfg, tokenizer=tokenizer, layout=layout, mesh=mesh,
               step=step, state=state)


def run_tokenizer(workdir: str) -> Tokenizer:
    """The tokenizer stored in the run (read-only: never builds or trains one)."""
    directory = os.path.join(workdir, TOKENIZER_DIR)
    if not os.path.isdir(directory):
        raise CheckpointError(f"{directory} does not exist: {workdir} is not a complete vlmjax "
                              "run (train or convert into it first)")
    return load_tokenizer(directory)


def flat_params(params: Mapping) -> dict[str, np.ndarray]:
    """{'image/encoder/layers/0/attn/query': float32 array, ...} of a (host) param tree, scanned
    stacks unrolled into per-layer paths."""
    leaves = jax.tree_util.tree_flatten_with_path(unstack_layer_params(params))[0]
    return {path_string(p): np.asarray(x, np.float32) for p, x in leaves}


def param_shapes(cfg: Mapping, vocab_size: int) -> dict[str, tuple[int, ...]]:
    """{param path: shape} of the model `cfg` describes (traced abstractly, no memory)."""
    build = model_builder(cfg, vocab_size, cfg["tokenizer"]["context_length"])
    abstract = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: build(nnx.Rngs(0))), nnx.Param))
    flat: dict[str, tuple[int, ...]] = {}
    map_with_path(lambda path, leaf: flat.__setitem__(path, tuple(leaf.shape)), abstract)
    return flat


def _fill_params(abstract_params: dict, values: Mapping[str, np.ndarray], source: str) -> dict:
    """The model's param tree with every leaf taken from `values` ({path: array}), shape-checked."""
    missing = []

    def take(path: str, leaf: jax.ShapeDtypeStruct) -> np.ndarray:
        if path not in values:
            missing.append(path)
            return np.zeros(leaf.shape, np.float32)
        value = np.asarray(values[path], np.float32)
        if value.shape != tuple(leaf.shape):
            raise CheckpointError(f"{source}: parameter {path} has shape {value.shape} but the "
                                  f"model described by config.json needs {tuple(leaf.shape)}")
        return value

    tree = map_with_path(take, abstract_params)
    if missing:
        raise CheckpointError(f"{source} gives no value for parameter {missing[0]} "
                              f"({len(missing)} missing in all)")
    return tree


def write_run(config: ml_collections.ConfigDict, values: Mapping[str, np.ndarray],
              vocab_size: int, workdir: str, source: str) -> None:
    """config.json and checkpoint 0 (params and model state, e.g. BatchNorm statistics, from
    `values`, {path: array}, a fresh optimizer,
    no data position) of the model `config` describes: an imported run. The tokenizer is the
    caller's to save into workdir/tokenizer."""
    ckpt_dir = os.path.join(workdir, CHECKPOINT_DIR)
    if os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir):
        raise CheckpointError(f"{ckpt_dir} already holds checkpoints; convert into a new --workdir")
    cfg = config.to_dict()
    # Written from one device: a checkpoint does not depend on the mesh (readers restore into
    # their own layout), and a replicated state would make orbax slice every array per replica.
    mesh = make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    layout = state_layout(cfg, vocab_size, cfg["tokenizer"]["context_length"], mesh)
    params = _fill_params(layout.abstract["params"], values, source)
    model_state = (_fill_params(layout.abstract["model_state"], values, source)
                   if layout.has_model_state else None)  # BatchNorm statistics
    state = layout.from_params(params, model_state)
    with Checkpointer(ckpt_dir, keep=1, async_save=False) as ckpt:
        ckpt.save(0, state, {})
    save_config(config, workdir)
