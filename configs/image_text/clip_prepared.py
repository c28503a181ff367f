"""CLIP ViT-B/32 pre-training on prepared image-text shards (e.g. CC3M / CC12M from img2dataset).

    python -m vlmjax.data.prepare --tar '/data/cc3m/{00000..00331}.tar' --output_dir /data/cc3m_prepared
    python -m vlmjax.train --config configs/image_text/clip_prepared.py:/data/cc3m_prepared \
        --workdir runs/cc3m

The argument is a prepared directory, or several joined by '+' (mixed uniformly; set
data.web.weights to weigh them); `tar:` entries in data.web.sources stream tars directly.
open_clip's recipe for its B/32 runs: batch 32k over many hosts, AdamW (0.9, 0.98, 1e-6), wd 0.2,
RandomResizedCrop scale (0.9, 1.0), OpenAI normalisation, context 77.
"""

import ml_collections

from vlmjax.config import base_config

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def get_config(arg: str = "/data/prepared") -> ml_collections.ConfigDict:
    c = base_config()
    c.data.name = "image_text"
    c.data.web.sources = tuple(f"prepared:{d}" for d in arg.split("+"))
    c.data.web.num_workers = 8
    c.data.web.crop = "random_resized"
    c.data.web.crop_scale = (0.9, 1.0)
    c.data.image_mean = OPENAI_MEAN
    c.data.image_std = OPENAI_STD

    c.tokenizer.kind = "clip_bpe"  # "" path: the vocabulary bundled with an installed open_clip
    c.tokenizer.context_length = 77

    c.model.embed_dim = 512
    c.model.image.variant = "B/32"
    c.model.image.image_size = 224
    c.model.image.ln_pre = True
    c.model.text.update(width=512, depth=12, heads=8, mlp_dim=2048)

    c.optimizer.lr = 5e-4
    c.optimizer.weight_decay = 0.2
    c.optimizer.warmup_steps = 2000
    c.train.batch_size = 4096
    c.train.num_steps = 100_000
    c.train.log_every = 100
    c.train.checkpoint_every = 1000
    c.evals = ml_collections.ConfigDict()
    return c
