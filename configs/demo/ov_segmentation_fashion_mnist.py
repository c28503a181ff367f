"""Demo: open-vocabulary segmentation on Fashion-MNIST scenes from the demo CLIP's pseudo-labels
(MaskCLIP+).

`get_config("PSEUDO_LABELS.npz")`, PSEUDO_LABELS from
    python -m vlmjax.train.teacher_pseudo_labels --teacher RUN --config THIS_FILE --evaluate 1000
(RUN: a CLIP run with embed_dim 96 and per-patch embeddings, e.g. the CLIP demo's; its 28x28
input is the window its MaskCLIP features are read in, sliding over the 56x56 canvases with
stride 14; --evaluate prints the teacher's own training-free novel / base / all mIoU on the
test canvases this config is evaluated on). A ViT student (the dense demo's widths: patch 7 on
56x56 canvases, an 8x8 grid of tokens) learns a class embedding per token by per-pixel
cross-entropy on the teacher's pseudo-labels of every class ("trousers", "sandal" and "bag",
the novel classes of the evaluation, are pseudo-labelled like the others, as in MaskCLIP+: no
ground-truth mask of any class is used). Evaluated on 1000 test canvases against their
ground-truth masks: mIoU of the novel, base and all classes, hIoU.
"""

import ml_collections

from vlmjax.config import base_config, select


def get_config(pseudo_labels: str = "") -> ml_collections.ConfigDict:
    c = base_config()
    select(c, "data.name", "fashion_mnist_scenes_pseudo_seg")
    c.data.update(image_mean=0.1, image_std=0.25, num_threads=1, pseudo_labels=pseudo_labels)
    c.tokenizer.update(kind="trained_bpe", vocab_size=1024, context_length=32)  # unused
    select(c, "model.name", "ov_segmenter")
    c.model.embed_dim = 96  # the teacher's
    c.model.activation = "quick_gelu"
    c.model.image.update(image_size=56, channels=1, patch_size=7, width=96, depth=3, heads=3,
                         mlp_dim=384, pool="gap")
    c.model.text.update(width=64, depth=1, heads=2, mlp_dim=128)  # the segmenter has no text tower
    select(c, "objective.name", "pseudo_segmentation")
    c.optimizer.lr = 1e-3
    c.optimizer.weight_decay = 0.05
    c.optimizer.warmup_steps = 100
    c.optimizer.end_lr_ratio = 0.01
    c.train.batch_size = 64
    c.train.num_steps = 1500
    c.train.log_every = 100
    c.train.checkpoint_every = 500
    c.train.eval_every = 0
    c.evals.segment = ml_collections.ConfigDict(dict(
        kind="ov_segmentation", dataset="fashion_mnist_scenes", split="test", num_images=1000,
        batch_size=40, class_embeddings=pseudo_labels))
    return c
