"""A tiny CLIP for tests: compiles in seconds on CPU. `get_config("siglip")` for SigLIP.

Tests point `data.dir` at a synthetic Fashion-MNIST-format dataset they write themselves.
"""

import math

import ml_collections

from vlmjax.config import base_config
from vlmjax.errors import ConfigError

ARGS = ("clip", "siglip")  # the objective


def get_config(arg: str = "clip") -> ml_collections.ConfigDict:
    if arg not in ARGS:
        raise ConfigError(f"{__file__}: unknown argument {arg!r}; choose clip or siglip "
                          "(path.py:siglip)")
    c = base_config()
    c.data.image_mean = 0.3
    c.data.image_std = 0.3
    c.data.num_threads = 1
    c.tokenizer.kind = "trained_bpe"
    c.tokenizer.vocab_size = 600
    c.tokenizer.context_length = 12
    c.model.embed_dim = 16
    c.model.image.update(image_size=28, channels=1, patch_size=14, width=16, depth=1, heads=2,
                         mlp_dim=32)
    c.model.text.update(width=16, depth=1, heads=2, mlp_dim=32)
    c.objective.name = arg
    if arg == "siglip":
        c.model.use_logit_bias = True
        c.model.logit_scale_init = math.log(10.0)
    c.optimizer.lr = 3e-3
    c.optimizer.warmup_steps = 2
    c.train.batch_size = 32
    c.train.num_steps = 20
    c.train.log_every = 5
    c.train.checkpoint_every = 10
    c.evals.zeroshot = ml_collections.ConfigDict(dict(kind="zeroshot", batch_size=200))
    return c
