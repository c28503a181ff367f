"""Evaluation suite: zero-shot segmentation and region classification on the dense benchmarks.

    python -m vlmjax.evaluate --workdir RUN --config configs/eval/dense_benchmarks.py[:METHODS]

For a run with image tokens (a trained two_tower / FILIP / patch_phrase, or an imported OpenAI,
open_clip or SigLIP model). Segmentation: PASCAL VOC 2012 (21 classes, background decided by
stuff-class background prompts, MaskCLIP's VOC setting), PASCAL Context-59, ADE20K-150 and
COCO-Stuff-171 (no background class); each image's shorter side resized to the protocol's
336 (COCO-Stuff 448), sliding windows of the model's image size at half-window stride.
Region classification: COCO 2017 and LVIS v1 val ground-truth boxes by crops (1x and 1.5x,
ViLD) and by RoI pooling of the dense features. METHODS: dense methods joined by '+'
(default tokens+maskclip+sclip; a ResNet tower takes tokens+maskclip). Each benchmark is
prepared first from its download (`python -m vlmjax.data.dense_builders --help`); validation
prints the command for a missing one. Datasets are read from TFDS's data_dir (override:
--config.evals.<name>.data_dir=...).
"""

import ml_collections

SEGMENTATION = (("voc2012_segmentation", "prompts"), ("pascal_context59", "none"),
                ("ade20k_150", "none"), ("coco_stuff171", "none"))
REGIONS = ("coco_boxes", "lvis_boxes")


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    methods = tuple(arg.split("+")) if arg else ("tokens", "maskclip", "sclip")
    c = ml_collections.ConfigDict()
    c.evals = ml_collections.ConfigDict()
    for name, background in SEGMENTATION:
        c.evals[f"seg_{name}"] = ml_collections.ConfigDict(dict(
            kind="dense_segmentation", dataset=name, split="test", batch_size=8, num_images=0,
            methods=methods, background=background))
    for name in REGIONS:
        c.evals[f"regions_{name}"] = ml_collections.ConfigDict(dict(
            kind="region_classification", dataset=name, split="test", batch_size=8,
            num_images=0, methods=("crop", *methods)))
    return c
