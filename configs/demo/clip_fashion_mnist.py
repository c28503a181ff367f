"""Demo: a small CLIP pre-trained on captioned Fashion-MNIST, evaluated zero-shot on its test set.

`get_config("siglip")` gives the same run with the sigmoid objective. LiT is a switch:
`--config.train.locked_tower=image`. Sized to train and evaluate in about 4 minutes on 2 CPU cores.
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
    c.data.name = "fashion_mnist"
    c.data.image_mean = 0.2860  # Fashion-MNIST pixel statistics
    c.data.image_std = 0.3530
    c.data.num_threads = 1  # batches are gathered with vectorised NumPy: one thread keeps up

    c.tokenizer.kind = "trained_bpe"  # trained on the caption vocabulary, stored in workdir
    c.tokenizer.vocab_size = 1024
    c.tokenizer.context_length = 16

    c.model.embed_dim = 96
    c.model.activation = "quick_gelu"  # cheaper than erf-GELU on CPU, same accuracy here
    c.model.image.image_size = 28
    c.model.image.channels = 1
    c.model.image.patch_size = 7
    c.model.image.width = 96
    c.model.image.depth = 3
    c.model.image.heads = 3
    c.model.image.mlp_dim = 384
    c.model.image.pool = "gap"  # global average pooling: 16 tokens, trains faster than a cls token
    c.model.text.width = 64  # the captions' vocabulary is small; a narrow text tower suffices
    c.model.text.depth = 2
    c.model.text.heads = 2
    c.model.text.mlp_dim = 256

    c.objective.name = arg
    if c.objective.name == "siglip":
        c.model.use_logit_bias = True
        c.model.logit_scale_init = math.log(10.0)
        c.model.logit_bias_init = -10.0

    c.optimizer.lr = 2e-3
    c.optimizer.weight_decay = 0.05
    c.optimizer.warmup_steps = 100
    c.optimizer.end_lr_ratio = 0.01

    c.train.batch_size = 256
    c.train.num_steps = 1000  # ~4.3 epochs; ~3.5 min on 2 CPU cores with tcmalloc
    c.train.log_every = 50
    c.train.checkpoint_every = 500
    c.train.eval_every = 0

    c.evals.zeroshot = ml_collections.ConfigDict(dict(
        kind="zeroshot", dataset="fashion_mnist", split="test", batch_size=1000))
    return c
