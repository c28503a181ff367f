"""A tiny FILIP for tests: the tiny CLIP's data, tokenizer and towers with FILIP's objective.

`get_config("per_direction")` gives each direction its own temperature. Tests point `data.dir`
at a synthetic Fashion-MNIST-format dataset they write themselves.
"""

import os

import ml_collections

from vlmjax.config import load_config_file, select
from vlmjax.errors import ConfigError

TINY_CLIP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny_clip.py")
ARGS = ("", "per_direction")  # one temperature, or one per direction


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    if arg not in ARGS:
        raise ConfigError(f"{__file__}: unknown argument {arg!r}; give no argument or "
                          "per_direction (path.py:per_direction)")
    c = load_config_file(TINY_CLIP)
    select(c, "model.name", "filip")
    c.model.image.pool = "gap"  # 4 patch tokens of 14 px
    c.model.filip.temperature_per_direction = arg == "per_direction"
    select(c, "objective.name", "filip")
    c.objective.chunk_size = 8
    c.evals.retrieval = ml_collections.ConfigDict(dict(kind="retrieval", num_images=48,
                                                       captions_per_image=2, batch_size=48))
    return c
