"""Evaluation suite: every background decision of zero-shot segmentation on Fashion-MNIST scenes.

    python -m vlmjax.evaluate --workdir RUN --config configs/eval/dense_scenes.py[:DATASET[:model]]

For a run trained on scenes (configs/demo/dense_fashion_mnist.py): segmentation of the test
canvases with background by a threshold on the best class score calibrated on the held-out
"val" canvases, by a logistic rule on (best score, patch norm, prompt margin) fit there, and by
the scenes' background prompts; image-level zero-shot on one-item canvases; region
classification by crops and RoI pooling. DATASET: fashion_mnist_scenes (default) or
fashion_mnist_scenes_grid; ":model" adds the model's own background (a patch_phrase run's
learned null phrase or phrase bias, a SigLIP's bias), which other runs do not have.
"""

import ml_collections

from vlmjax.errors import ConfigError

METHODS = ("tokens", "maskclip", "sclip")


def get_config(arg: str = "fashion_mnist_scenes") -> ml_collections.ConfigDict:
    arg, _, own = arg.partition(":")
    if own not in ("", "model"):
        raise ConfigError(f"{__file__}: unknown suffix {own!r}; use DATASET or DATASET:model")
    c = ml_collections.ConfigDict()
    c.evals = ml_collections.ConfigDict()
    c.evals.zeroshot = ml_collections.ConfigDict(dict(
        kind="zeroshot", dataset=arg, split="test_single", num_images=2000, batch_size=400))
    for background in ("calibrated", "learned", "prompts") + (("model",) if own else ()):
        c.evals[f"dense_{background}"] = ml_collections.ConfigDict(dict(
            kind="dense_segmentation", dataset=arg, split="test", num_images=1000, batch_size=40,
            methods=METHODS, background=background))
    c.evals.regions = ml_collections.ConfigDict(dict(
        kind="region_classification", dataset=arg, split="test", num_images=1000, batch_size=40,
        methods=("crop", *METHODS)))
    return c
