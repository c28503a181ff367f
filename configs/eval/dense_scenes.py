"""Evaluation suite: every background decision of zero-shot segmentation on Fashion-MNIST scenes.

    python -m vlmjax.evaluate --workdir RUN --config configs/eval/dense_scenes.py[:DATASET]

For a run trained on scenes (configs/demo/dense_fashion_mnist.py): segmentation of the test
canvases with background by a threshold on the best class score calibrated on the held-out
"val" canvases, by a logistic rule on (best score, patch norm, prompt margin) fit there, and by
the scenes' background prompts; image-level zero-shot on one-item canvases; region
classification by crops and RoI pooling. DATASET: fashion_mnist_scenes (default) or
fashion_mnist_scenes_grid.
"""

import ml_collections

METHODS = ("tokens", "maskclip", "sclip")


def get_config(arg: str = "fashion_mnist_scenes") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.evals = ml_collections.ConfigDict()
    c.evals.zeroshot = ml_collections.ConfigDict(dict(
        kind="zeroshot", dataset=arg, split="test_single", num_images=2000, batch_size=400))
    for background in ("calibrated", "learned", "prompts"):
        c.evals[f"dense_{background}"] = ml_collections.ConfigDict(dict(
            kind="dense_segmentation", dataset=arg, split="test", num_images=1000, batch_size=40,
            methods=METHODS, background=background))
    c.evals.regions = ml_collections.ConfigDict(dict(
        kind="region_classification", dataset=arg, split="test", num_images=1000, batch_size=40,
        methods=("crop", *METHODS)))
    return c
