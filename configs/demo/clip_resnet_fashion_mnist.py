"""Demo: a small CLIP with a ResNet image tower (CLIP's ModifiedResNet, BatchNorm) pre-trained on
captioned Fashion-MNIST, evaluated zero-shot on its test set.

The demo CLIP's text tower and training recipe (configs/demo/clip_fashion_mnist.py) with the
ViT swapped for a ResNet: a stem of three 3x3 convolutions (the first strided: 28 -> 14), three
bottleneck stages (the first anti-aliased and strided: 7x7x64, then 7x7x128 and 7x7x256) and
CLIP's attention pool over the 49 positions, whose 96-wide output is the image embedding
(model.image.proj='none', as CLIP's ResNets). Stages at 7x7 keep the step cheap on CPU.
"""

import os

import ml_collections

from vlmjax.config import complete, load_config_file
from vlmjax.errors import ConfigError

CLIP_DEMO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "clip_fashion_mnist.py")
ARGS = ("clip", "siglip")  # the objective, as the demo CLIP


def get_config(arg: str = "clip") -> ml_collections.ConfigDict:
    if arg not in ARGS:
        raise ConfigError(f"{__file__}: unknown argument {arg!r}; choose clip or siglip "
                          "(path.py:siglip)")
    c = load_config_file(f"{CLIP_DEMO}:{arg}")
    # A fresh image section: the ViT's keys would only be dropped (and logged) by a select.
    c.model.image = ml_collections.ConfigDict(dict(kind="resnet", image_size=28, channels=1))
    complete(c)
    c.model.image.update(layers=(1, 1, 1), width=16, stem_stride=2, strides=(2, 1, 1),
                         head_width=32, output_dim=96, proj="none")
    c.model.embed_dim = 96
    return c
