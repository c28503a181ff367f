"""Writes an imported model as a vlmjax run directory: config.json, tokenizer, step-0 checkpoint.

The checkpoint holds {step 0, params, a fresh optimizer state} and an empty data position, so
`vlmjax.evaluate --workdir` restores it as it is and `vlmjax.train` continues from it
(fine-tuning) with the same optimizer structure.
"""

import os
from collections.abc import Mapping

import jax
import ml_collections
import numpy as np

from vlmjax.errors import CheckpointError
from vlmjax.parallel.mesh import make_mesh
from vlmjax.train.checkpoint import Checkpointer
from vlmjax.train.param_groups import map_with_path
from vlmjax.train.state import state_layout
from vlmjax.train.workdir import save_config


def fill_params(abstract_params: dict, values: Mapping[str, np.ndarray], source: str) -> dict:
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


def write_workdir(config: ml_collections.ConfigDict, values: Mapping[str, np.ndarray],
                  vocab_size: int, workdir: str, source: str) -> None:
    """config.json and checkpoint 0 of the model `config` describes, with `values` as params."""
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir):
        raise CheckpointError(f"{ckpt_dir} already holds checkpoints; convert into a new --workdir")
    cfg = config.to_dict()
    mesh = make_mesh(cfg["mesh"])
    layout = state_layout(cfg, vocab_size, cfg["tokenizer"]["context_length"], mesh)
    state = layout.from_params(fill_params(layout.abstract["params"], values, source))
    with Checkpointer(ckpt_dir, keep=1, async_save=False) as ckpt:
        ckpt.save(0, state, {})
    save_config(config, workdir)
