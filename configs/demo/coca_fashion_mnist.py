"""Demo: a small CoCa pre-trained on captioned Fashion-MNIST, evaluated zero-shot and by captions.

The CLIP demo's config (same data, tokenizer, image tower, optimizer and schedule) with CoCa's
model and objective: a 1-layer unimodal text tower (appended CLS) + 1 multimodal layer at the
text width.
`get_config("open_clip")` uses open_clip's single-pooler layout. The paper-size model is
configs/coca_base.py.
"""

import os

import ml_collections

from vlmjax.config import load_config_file, select
from vlmjax.errors import ConfigError

CLIP_DEMO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "clip_fashion_mnist.py")
ARGS = ("paper", "open_clip")  # the attentional poolers' layout


def get_config(arg: str = "paper") -> ml_collections.ConfigDict:
    if arg not in ARGS:
        raise ConfigError(f"{__file__}: unknown argument {arg!r}; choose paper or open_clip "
                          "(path.py:open_clip)")
    c = load_config_file(CLIP_DEMO)
    select(c, "model.name", "coca")
    select(c, "objective.name", "coca")
    c.model.coca.pooler = arg
    c.model.coca.caption_queries = 16  # the poolers read the 16 patch tokens
    c.model.coca.pooler_heads = 4
    c.model.text.update(depth=1, pool="cls")  # the unimodal half: a causal tower + CLS
    c.model.coca.multimodal_depth = 1

    # The captioner as a classifier: likelihood of each class's prompt given the image.
    c.evals.caption_zeroshot = ml_collections.ConfigDict(dict(
        kind="caption_zeroshot", dataset="fashion_mnist", split="test", batch_size=200,
        num_images=2000))
    # Greedy captions of 1000 test images: BLEU-4, CIDEr-D and the fraction naming the class.
    c.evals.captioning = ml_collections.ConfigDict(dict(
        kind="captioning", dataset="fashion_mnist", split="test", num_images=1000))
    return c
