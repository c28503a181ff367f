"""A tiny CoCa for tests: the tiny CLIP's data, tokenizer and sizes with CoCa's model and objective.

`get_config("open_clip")` uses the single-pooler layout. Tests point `data.dir` at a synthetic
Fashion-MNIST-format dataset they write themselves.
"""

import os

import ml_collections

from vlmjax.config import load_config_file, select
from vlmjax.errors import ConfigError

TINY_CLIP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny_clip.py")
ARGS = ("paper", "open_clip")  # the attentional poolers' layout


def get_config(arg: str = "paper") -> ml_collections.ConfigDict:
    if arg not in ARGS:
        raise ConfigError(f"{__file__}: unknown argument {arg!r}; choose paper or open_clip "
                          "(path.py:open_clip)")
    c = load_config_file(TINY_CLIP)
    select(c, "model.name", "coca")
    select(c, "objective.name", "coca")
    c.model.image.pool = "gap"
    c.model.text.update(depth=1, pool="cls")  # the unimodal half: a causal tower + CLS
    c.model.coca.update(pooler=arg, caption_queries=4, pooler_heads=2, multimodal_depth=1)
    return c
