"""CoCa-Base as in the paper (Yu et al. 2022, table 1): ViT-B/16 (12 layers, width 768) image
encoder, text decoder of 12 unimodal + 12 multimodal layers at width 768, 64k vocabulary.

Sizes only: point `data.*` and `tokenizer.*` (the paper uses a 64k SentencePiece model) at real
data before training. The paper pre-trains at 288px with Adafactor, wd 0.01, batch 65,536.
"""

import ml_collections

from vlmjax.config import base_config
from vlmjax.errors import ConfigError

ARGS = ("paper", "open_clip")  # the attentional poolers' layout


def get_config(arg: str = "paper") -> ml_collections.ConfigDict:
    if arg not in ARGS:
        raise ConfigError(f"{__file__}: unknown argument {arg!r}; choose paper or open_clip "
                          "(path.py:open_clip)")
    c = base_config(model="coca", objective="coca")
    c.tokenizer.kind = "trained_bpe"
    c.tokenizer.vocab_size = 64_000
    c.tokenizer.context_length = 64
    c.model.embed_dim = 768
    c.model.image.update(variant="B/16", image_size=224, pool="gap")
    # The unimodal half: 12 causal layers pooled at an appended CLS.
    c.model.text.update(width=768, depth=12, heads=12, mlp_dim=3072, pool="cls")
    c.model.coca.update(pooler=arg, caption_queries=256, pooler_heads=8, multimodal_depth=12)
    c.optimizer.weight_decay = 0.01
    return c
