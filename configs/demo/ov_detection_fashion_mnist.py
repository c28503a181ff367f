"""Demo: open-vocabulary detection on Fashion-MNIST scenes, distilled from the demo CLIP.

`get_config("[variant:]TARGETS.npz")`, TARGETS from
    python -m vlmjax.train.teacher_targets --teacher RUN --config THIS_FILE
(RUN: a CLIP run with embed_dim 96, e.g. the CLIP demo's; its 28x28 input is what the crops
are resized to). A ViT student (the dense demo's widths: patch 7 on 56x56 canvases, an 8x8 grid
of tokens, each a box / class-embedding / objectness prediction) learns the 7 base classes'
boxes; "trousers", "sandal" and "bag" (data.novel_classes) stay in the images unlabelled.
Variants: "vild" (default): ViLD-text (softmax over the teacher's base-class text embeddings
and a learned background) + ViLD-image (L1 to the teacher's crop embeddings of the labelled
boxes) + DETR's box losses on Hungarian matches; "text": the same without ViLD-image
(objective.image_weight=0); "regions": ViLD-image on every item's box, novel items included
but never labelled (data.distill_boxes="all": idealised class-agnostic proposals, where ViLD
uses an RPN's).
Evaluated on 1000 test canvases with all 10 classes: box AP / AP50 for novel, base and all.
"""

import ml_collections

from vlmjax.config import base_config, select
from vlmjax.errors import ConfigError

VARIANTS = ("vild", "text", "regions")


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    variant, _, targets = arg.rpartition(":") if ":" in arg else ("vild", "", arg)
    if variant not in VARIANTS:
        raise ConfigError(f"{__file__}: unknown variant {variant!r}; give "
                          "[vild|text|regions:]TARGETS.npz")
    c = base_config()
    select(c, "data.name", "fashion_mnist_scenes_detection")
    c.data.update(image_mean=0.1, image_std=0.25, num_threads=1, targets=targets,
                  distill_boxes="all" if variant == "regions" else "base")
    c.tokenizer.update(kind="trained_bpe", vocab_size=1024, context_length=32)  # unused
    select(c, "model.name", "ov_detector")
    c.model.embed_dim = 96  # the teacher's
    c.model.activation = "quick_gelu"
    c.model.image.update(image_size=56, channels=1, patch_size=7, width=96, depth=3, heads=3,
                         mlp_dim=384, pool="gap")
    c.model.text.update(width=64, depth=1, heads=2, mlp_dim=128)  # the detector has no text tower
    select(c, "objective.name", "ov_detection")
    if variant == "text":
        c.objective.image_weight = 0.0
    c.optimizer.lr = 1e-3
    c.optimizer.weight_decay = 0.05
    c.optimizer.warmup_steps = 100
    c.optimizer.end_lr_ratio = 0.01
    c.train.batch_size = 64
    c.train.num_steps = 1500
    c.train.log_every = 100
    c.train.checkpoint_every = 500
    c.train.eval_every = 0
    c.evals.detect = ml_collections.ConfigDict(dict(
        kind="ov_detection", dataset="fashion_mnist_scenes", split="test", num_images=1000,
        batch_size=40, class_embeddings=targets))
    return c
