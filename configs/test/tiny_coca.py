"""A tiny CoCa for tests: compiles in seconds on CPU (`get_config("open_clip")`: one pooler).

Tests point `data.dir` at a synthetic Fashion-MNIST-format dataset they write themselves.
"""

import ml_collections

from vlmjax.config import base_config


def get_config(arg: str = "paper") -> ml_collections.ConfigDict:
    c = base_config()
    c.data.image_mean = 0.3
    c.data.image_std = 0.3
    c.data.num_threads = 1
    c.tokenizer.kind = "trained_bpe"
    c.tokenizer.vocab_size = 600
    c.tokenizer.context_length = 12
    c.model.name = "coca"
    c.model.embed_dim = 16
    c.model.image.update(image_size=28, channels=1, patch_size=14, width=16, depth=1, heads=2,
                         mlp_dim=32, pool="gap")
    c.model.text.update(width=16, depth=2, heads=2, mlp_dim=32)
    c.model.coca.update(pooler=arg, caption_queries=4, pooler_heads=2, unimodal_depth=1,
                        multimodal_depth=1)
    c.objective.name = "coca"
    c.optimizer.lr = 3e-3
    c.optimizer.warmup_steps = 2
    c.train.batch_size = 32
    c.train.num_steps = 20
    c.train.log_every = 5
    c.train.checkpoint_every = 10
    c.evals.zeroshot = ml_collections.ConfigDict(dict(kind="zeroshot", batch_size=200))
    return c
