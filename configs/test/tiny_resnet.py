"""A tiny ResNet CLIP for tests (the tiny CLIP's text tower): compiles in seconds on CPU.

`get_config("siglip")` for SigLIP, `get_config("bert")` for a tiny BERT text tower (on the
trained tokenizer: BERT pools its first position).
"""

import os

import ml_collections

from vlmjax.config import complete, load_config_file, select
from vlmjax.errors import ConfigError

TINY_CLIP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny_clip.py")
ARGS = ("clip", "siglip", "bert")


def get_config(arg: str = "clip") -> ml_collections.ConfigDict:
    if arg not in ARGS:
        raise ConfigError(f"{__file__}: unknown argument {arg!r}; choose clip | siglip | bert "
                          "(path.py:bert)")
    c = load_config_file(f"{TINY_CLIP}:{'siglip' if arg == 'siglip' else 'clip'}")
    # A fresh image section: the ViT's keys would only be dropped (and logged) by a select.
    c.model.image = ml_collections.ConfigDict(dict(kind="resnet", image_size=28, channels=1))
    complete(c)
    # 28 -> 14 (stem) -> 7 (stage 1, anti-aliased) -> 7: features 2 * 8 * 4 = 64, 49 tokens.
    c.model.image.update(layers=(1, 1), width=8, stem_stride=2, strides=(2, 1), head_width=16,
                         output_dim=16, proj="none")
    if arg == "bert":
        select(c, "model.text.kind", "bert")
        c.model.text.update(width=16, depth=1, heads=2, mlp_dim=32, max_positions=16)
    return c
