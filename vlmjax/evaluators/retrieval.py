"""Image-text retrieval: recall@1/5/10 in both directions, scored as the model family scores pairs.

The captioned set is built from a labelled dataset (`captions_per_image` captions of each
image's class, like COCO's 5 per image), with pair or class relevance. CLIP-like models rank by
cosine of pooled embeddings, FILIP by its token-wise similarities (s_I for image->text, s_T
for text->image), chosen from the checkpoint's model family (`evaluators.scoring`).
"""

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from vlmjax.data.captions import build_caption_table, sample_image_captions
from vlmjax.data.datasets import caption_vocabulary, load_split
from vlmjax.evaluators.context import EvalContext, padded_global_batch
from vlmjax.evaluators.metrics import retrieval_metrics
from vlmjax.evaluators.scoring import scoring_for
from vlmjax.parallel.mesh import replicated
from vlmjax.train.step import normalize_images

DEFAULTS = {
    "kind": "retrieval",
    "dataset": "fashion_mnist",
    "split": "test",
    "data_dir": "",  # "" = config.data.dir
    "num_images": 1000,  # the first N images of the split
    "captions_per_image": 5,
    "batch_size": 500,
    "seed": 0,  # which captions each image gets
    # "pair": a caption is relevant to its own image only (COCO / Flickr30k protocol);
    # "class": to every image of its class (metric learning's Recall@k). Captions of a
    # labelled dataset describe the class, not the image, so "pair" mostly measures ties there.
    "relevance": "pair",
}
RELEVANCE = ("pair", "class")


class Retrieval:
    """Scores every image against every caption, then recall@k both ways."""

    def __init__(self, cfg: Mapping, ctx: EvalContext):
        cfg = {**DEFAULTS, **cfg}
        self.cfg, self.ctx = cfg, ctx
        data = ctx.config["data"]
        self.name = f"retrieval/{cfg['dataset']}"
        images, labels = load_split(cfg["dataset"], cfg["data_dir"] or data["dir"], cfg["split"])
        self.images, labels = images[: cfg["num_images"]], labels[: cfg["num_images"]]
        names, templates = caption_vocabulary(cfg["dataset"])
        table = build_caption_table(names, templates, ctx.tokenizer, ctx.context_length)
        rows, image_of_text = sample_image_captions(labels, table, cfg["captions_per_image"],
                                                    cfg["seed"])
        if cfg["relevance"] not in RELEVANCE:
            raise ValueError(f"relevance must be one of {RELEVANCE}, got {cfg['relevance']!r}")
        owner = np.arange(len(labels)) if cfg["relevance"] == "pair" else labels
        self.positive = owner[:, None] == owner[image_of_text][None, :]
        self.texts = {"text": table.ids[rows], "text_mask": table.mask[rows]}
        mean, std, graphdef = data["image_mean"], data["image_std"], ctx.graphdef
        self.scoring = scoring = scoring_for(ctx.config)

        def encode_images(params: dict, batch: Mapping) -> Any:
            model = nnx.merge(graphdef, params)
            return scoring.image_features(model, normalize_images(batch["image"], mean, std))

        def encode_texts(params: dict, batch: Mapping) -> Any:
            return scoring.text_features(nnx.merge(graphdef, params), batch["text"],
                                         batch["text_mask"])

        out = replicated(ctx.mesh)
        self._encode_images = jax.jit(encode_images, out_shardings=out)
        self._encode_texts = jax.jit(encode_texts, out_shardings=out)
        self._scores = jax.jit(scoring.scores, out_shardings=out)

    def _features(self, encode: Any, arrays: Mapping[str, np.ndarray], params: dict) -> list:
        """Features of every row, one padded global batch at a time: [(features, real rows)]."""
        n, size = len(next(iter(arrays.values()))), self.cfg["batch_size"]
        batches = []
        for start in range(0, n, size):
            batch, real = padded_global_batch(arrays, start, size, self.ctx.batch_sharding)
            batches.append((encode(params, batch), real))
        return batches

    def run(self, params: dict) -> dict[str, float]:
        """text_retrieval_recall@k and image_retrieval_recall@k for k = 1, 5, 10."""
        images = self._features(self._encode_images, {"image": self.images}, params)
        texts = self._features(self._encode_texts, self.texts, params)
        i2t_rows, t2i_rows = [], []
        for image_features, real_images in tqdm(images, desc=self.name, leave=False,
                                                disable=jax.process_index() != 0):
            i2t, t2i = [], []
            for text_features, real_texts in texts:
                a, b = self._scores(image_features, text_features)
                i2t.append(np.asarray(a)[:real_images, :real_texts])
                t2i.append(np.asarray(b)[:real_images, :real_texts])
            i2t_rows.append(np.concatenate(i2t, axis=1))
            t2i_rows.append(np.concatenate(t2i, axis=1))
        return retrieval_metrics(np.concatenate(i2t_rows), np.concatenate(t2i_rows), self.positive)
