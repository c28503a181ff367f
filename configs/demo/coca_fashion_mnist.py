"""Demo: a small CoCa pre-trained on captioned Fashion-MNIST, evaluated zero-shot on its test set.

Same data, tokenizer and image tower as the CLIP demo (configs/demo/clip_fashion_mnist.py); the
text side is a 1 unimodal + 1 multimodal layer decoder at the text width. `get_config("open_clip")`
uses open_clip's single-pooler layout. The paper-size model is configs/coca_base.py.
"""

import ml_collections

from vlmjax.config import base_config


def get_config(arg: str = "paper") -> ml_collections.ConfigDict:
    c = base_config()
    c.data.name = "fashion_mnist"
    c.data.image_mean = 0.2860  # Fashion-MNIST pixel statistics
    c.data.image_std = 0.3530
    c.data.num_threads = 1

    c.tokenizer.kind = "trained_bpe"
    c.tokenizer.vocab_size = 1024
    c.tokenizer.context_length = 16

    c.model.name = "coca"
    c.model.embed_dim = 96
    c.model.activation = "quick_gelu"
    c.model.image.image_size = 28
    c.model.image.channels = 1
    c.model.image.patch_size = 7
    c.model.image.width = 96
    c.model.image.depth = 3
    c.model.image.heads = 3
    c.model.image.mlp_dim = 384
    c.model.image.pool = "gap"  # no class token: the poolers read the 16 patch tokens
    c.model.text.width = 64
    c.model.text.heads = 2
    c.model.text.mlp_dim = 256
    c.model.coca.pooler = arg if arg in ("paper", "open_clip") else "paper"
    c.model.coca.caption_queries = 16
    c.model.coca.pooler_heads = 4
    c.model.coca.unimodal_depth = 1
    c.model.coca.multimodal_depth = 1

    c.objective.name = "coca"

    c.optimizer.lr = 2e-3
    c.optimizer.weight_decay = 0.05
    c.optimizer.warmup_steps = 100
    c.optimizer.end_lr_ratio = 0.01

    c.train.batch_size = 256
    c.train.num_steps = 1000
    c.train.log_every = 50
    c.train.checkpoint_every = 500
    c.train.eval_every = 0

    c.evals.zeroshot = ml_collections.ConfigDict(dict(
        kind="zeroshot", dataset="fashion_mnist", split="test", batch_size=1000))
    # The captioner as a classifier: likelihood of each class's prompt given the image.
    c.evals.caption_zeroshot = ml_collections.ConfigDict(dict(
        kind="caption_zeroshot", dataset="fashion_mnist", split="test", batch_size=200,
        num_images=2000))
    # Greedy captions of 1000 test images: BLEU-4, CIDEr-D and the fraction naming the class.
    c.evals.captioning = ml_collections.ConfigDict(dict(
        kind="captioning", dataset="fashion_mnist", split="test", num_images=1000))
    return c
