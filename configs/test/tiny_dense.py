"""A tiny model on Fashion-MNIST scenes for tests: compiles in seconds on CPU.

`get_config(objective)`: patch_phrase (default), clip, siglip or filip; dense segmentation and
region classification evaluators on a few test canvases. Tests point `data.dir` at a synthetic
Fashion-MNIST-format dataset.
"""

import math

import ml_collections

from vlmjax.config import base_config, select
from vlmjax.errors import ConfigError

OBJECTIVES = ("patch_phrase", "clip", "siglip", "filip")


def get_config(arg: str = "patch_phrase") -> ml_collections.ConfigDict:
    if arg not in OBJECTIVES:
        raise ConfigError(f"{__file__}: unknown argument {arg!r}; choose one of {OBJECTIVES}")
    c = base_config()
    select(c, "data.name", "fashion_mnist_scenes")
    c.data.update(image_mean=0.1, image_std=0.25, num_threads=1, phrases=arg == "patch_phrase",
                  phrase_length=6)
    c.tokenizer.update(kind="trained_bpe", vocab_size=600, context_length=24)
    if arg in ("filip", "patch_phrase"):
        select(c, "model.name", arg)
    c.model.embed_dim = 16
    c.model.image.update(image_size=16, channels=1, patch_size=8, width=16, depth=1, heads=2,
                         mlp_dim=32, pool="gap")
    c.model.text.update(width=16, depth=1, heads=2, mlp_dim=32)
    select(c, "objective.name", arg)
    if arg == "siglip":
        c.model.use_logit_bias = True
        c.model.logit_scale_init = math.log(10.0)
    if arg == "filip":
        c.objective.implementation = "dense"
    c.optimizer.update(lr=3e-3, warmup_steps=2)
    c.train.update(batch_size=16, num_steps=6, log_every=3, checkpoint_every=3)
    c.evals.dense = ml_collections.ConfigDict(dict(
        kind="dense_segmentation", dataset="fashion_mnist_scenes", num_images=16, batch_size=8,
        methods=("tokens", "maskclip", "sclip"), calibration_images=16))
    c.evals.regions = ml_collections.ConfigDict(dict(
        kind="region_classification", dataset="fashion_mnist_scenes", num_images=16,
        batch_size=8, methods=("crop", "tokens")))
    return c
