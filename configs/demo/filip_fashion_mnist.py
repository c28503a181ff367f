"""Demo: a small FILIP pre-trained on captioned Fashion-MNIST, evaluated zero-shot token-wise.

The CLIP demo's config (same data, tokenizer, towers, optimizer and schedule) with FILIP's
model and objective: the 16 patch tokens of each image against the caption's tokens. Zero-shot
classification scores images by token-wise similarity, averaged over the prompt templates.
`get_config("per_direction")` gives each direction its own temperature.
"""

import os

import ml_collections

from vlmjax.config import load_config_file, select
from vlmjax.errors import ConfigError

CLIP_DEMO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "clip_fashion_mnist.py")
ARGS = ("", "per_direction")  # one temperature, or one per direction


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    if arg not in ARGS:
        raise ConfigError(f"{__file__}: unknown argument {arg!r}; give no argument or "
                          "per_direction (path.py:per_direction)")
    c = load_config_file(CLIP_DEMO)
    select(c, "model.name", "filip")
    c.model.filip.temperature_per_direction = arg == "per_direction"
    select(c, "objective.name", "filip")
    c.objective.update(implementation="ring", chunk_size=64)
    # 1000 test images with 5 captions of their class each: recall@k by token-wise scores. The
    # captions describe the class, so a hit is any caption (image) of the query's class.
    c.evals.retrieval = ml_collections.ConfigDict(dict(
        kind="retrieval", dataset="fashion_mnist", split="test", num_images=1000,
        captions_per_image=5, relevance="class"))
    return c
