"""Writes an imported model as a vlmjax run directory: config.json, tokenizer, step-0 checkpoint.

The checkpoint holds {step 0, params, a fresh optimizer state} and an empty data position, so
`vlmjax.evaluate --workdir` restores it as it is and `vlmjax.train` continues from it
(fine-tuning) with the same optimizer structure. Runs are written through the one run module
(`vlmjax.train.run`), never through the trainer's checkpoint or state internals.
"""

from collections.abc import Mapping

import ml_collections
import numpy as np

from vlmjax.config import base_config
from vlmjax.config.defaults import channel_stat
from vlmjax.train import run


def imported_config(tokenizer_kind: str, tokenizer_path: str, context_length: int,
                    vocab_size: int, image_mean: tuple, image_std: tuple
                    ) -> ml_collections.ConfigDict:
    """The defaults with an imported model's tokenizer and image statistics, and fine-tuning
    optimizer settings (small lr, short warmup; override with --config.*); callers set model.*."""
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
    return run.param_shapes(cfg, vocab_size)


def write_workdir(config: ml_collections.ConfigDict, values: Mapping[str, np.ndarray],
                  vocab_size: int, workdir: str, source: str) -> None:
    """config.json and checkpoint 0 of the model `config` describes, with `values` as params."""
    run.write_run(config, values, vocab_size, workdir, source)
