"""A tiny open-vocabulary segmenter on Fashion-MNIST scenes for tests: compiles in seconds on CPU.

`get_config("PSEUDO_LABELS.npz")`: the pseudo-label file (python -m
vlmjax.train.teacher_pseudo_labels) the source trains on and whose class embeddings the
evaluator scores all ten classes with; a ViT student on 32x32 canvases (16 tokens), embed_dim
16 (the tiny CLIP teacher's). Tests point `data.dir` at a synthetic Fashion-MNIST-format dataset.
"""

import ml_collections

from vlmjax.config import base_config, select


def get_config(pseudo_labels: str = "") -> ml_collections.ConfigDict:
    c = base_config()
    select(c, "data.name", "fashion_mnist_scenes_pseudo_seg")
    c.data.update(image_mean=0.1, image_std=0.25, num_threads=1, pseudo_labels=pseudo_labels)
    c.tokenizer.update(kind="trained_bpe", vocab_size=600, context_length=12)
    select(c, "model.name", "ov_segmenter")
    c.model.embed_dim = 16
    c.model.image.update(image_size=32, channels=1, patch_size=8, width=16, depth=1, heads=2,
                         mlp_dim=32, pool="gap")
    c.model.text.update(width=16, depth=1, heads=2, mlp_dim=32)  # unused: no text tower
    select(c, "objective.name", "pseudo_segmentation")
    c.optimizer.update(lr=3e-3, warmup_steps=2)
    c.train.update(batch_size=16, num_steps=6, log_every=3, checkpoint_every=3)
    c.evals.segment = ml_collections.ConfigDict(dict(
        kind="ov_segmentation", dataset="fashion_mnist_scenes", num_images=16, batch_size=8,
        class_embeddings=pseudo_labels))
    return c
