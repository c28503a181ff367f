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


def imported_config(tokenizer_kind: str, tokenizer_path: str, context_length: int,
                    vocab_size: int, image_mean: tuple, image_std: tuple
                    ) -> ml_collections.ConfigDict:
    """The defaults with an imported model's tokenizer and image statistics, and fine-tuning
    optimizer settings (small lr, short warmup; override with --config.*); callers set model.*."""
    from vlmjax.config import base_config
    from vlmjax.config.defaults import channel_stat
    c = base_config()
    c.tokenizer.kind = tokenizer_kind
    c.tokenizer.path = tokenizer_path
    c.tokenizer.context_length = int(context_length)
    c.tokenizer.vocab_size = int(vocab_size)
    c.data.image_mean = channel_stat(tuple(image_mean))
    c.data.image_std = channel_stat(tuple(image_std))
    c.optimizer.lr = 1e-5
    c.optimizer.warmup_steps = 100
    return c


def param_shapes(cfg: dict, vocab_size: int) -> dict[str, tuple[int, ...]]:
    """{param path: shape} of the model `cfg` describes (traced abstractly, no memory)."""
    from flax import nnx

    from vlmjax.train.state import model_builder
    build = model_builder(cfg, vocab_size, cfg["tokenizer"]["context_length"])
    abstract = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: build(nnx.Rngs(0)))))
    flat = {}
    map_with_path(lambda path, leaf: flat.__setitem__(path, tuple(leaf.shape)), abstract)
    return flat


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
    # Written from one device: a checkpoint does not depend on the mesh (readers restore into
    # their own layout), and a replicated state would make orbax slice every array per replica.
    mesh = make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    layout = state_layout(cfg, vocab_size, cfg["tokenizer"]["context_length"], mesh)
    state = layout.from_params(fill_params(layout.abstract["params"], values, source))
    with Checkpointer(ckpt_dir, keep=1, async_save=False) as ckpt:
        ckpt.save(0, state, {})
    save_config(config, workdir)
