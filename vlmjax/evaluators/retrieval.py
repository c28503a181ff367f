"""Image-text retrieval: recall@1/5/10 in both directions, scored as the model family scores pairs.

Sets: COCO and Flickr30k in Karpathy's splits (`data.karpathy_retrieval`: every human caption
of each image, pair relevance), or a labelled dataset (`captions_per_image` captions of each
image's class, pair or class relevance). CLIP-like models rank by cosine of pooled embeddings,
FILIP by its token-wise similarities (s_I for image->text, s_T for text->image), chosen from the
checkpoint's model family (`evaluators.scoring`).
"""

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from vlmjax.data.captions import caption_texts, sample_image_captions
from vlmjax.data.datasets import DATASETS, caption_vocabulary, check_dataset, load_split
from vlmjax.evaluators.context import EvalContext, EvalFacts, loaded_global_batch, padded_global_batch
from vlmjax.evaluators.metrics import retrieval_metrics
from vlmjax.evaluators.scoring import scoring_for
from vlmjax.options import fail
from vlmjax.parallel.mesh import replicated

DEFAULTS = {
    "kind": "retrieval",
    "dataset": "fashion_mnist",
    "split": "test",
    # "" = config.data.dir (labelled datasets) or TFDS's default (coco, flickr30k)
    "data_dir": "",
    "num_images": 1000,  # the first N images of the split; 0 = all (Karpathy test: 5k / 1k)
    "captions_per_image": 5,
    "batch_size": 500,
    "seed": 0,  # which captions each image gets
    # "pair": a caption is relevant to its own image only (COCO / Flickr30k protocol);
    # "class": to every image of its class (metric learning's Recall@k). Captions of a
    # labelled dataset describe the class, not the image, so "pair" mostly measures ties there.
    "relevance": "pair",
}
RELEVANCE = ("pair", "class")



def check(name: str, cfg: Mapping, facts: EvalFacts) -> None:
    """Known relevance, the set readable (human-captioned sets need pair relevance)."""
    if cfg["relevance"] not in RELEVANCE:
        fail(f"evals.{name}.relevance", f"is {cfg['relevance']!r}",
             "choose 'pair' (own captions) or 'class' (captions of the same class)")
    if cfg["dataset"] in DATASETS:
        check_dataset(cfg["dataset"], cfg["data_dir"] or facts.data_dir,
                      key=f"evals.{name}.data_dir" if cfg["data_dir"] else "data.dir",
                      split=cfg["split"])
        return
    if cfg["relevance"] != "pair":
        fail(f"evals.{name}.relevance", f"='{cfg['relevance']}' but {cfg['dataset']} has human "
             "captions of each image", "use relevance='pair'")
    from vlmjax.data.karpathy_retrieval import open_retrieval_split
    open_retrieval_split(cfg["dataset"], cfg["split"], cfg["data_dir"])


class Retrieval:
    """Scores every image against every caption, then recall@k both ways."""

    def __init__(self, cfg: Mapping, ctx: EvalContext):
        cfg = {**DEFAULTS, **cfg}
        self.cfg, self.ctx = cfg, ctx
        self.name = f"retrieval/{cfg['dataset']}"
        if cfg["relevance"] not in RELEVANCE:
            raise ValueError(f"relevance must be one of {RELEVANCE}, got {cfg['relevance']!r}")
        build = _labelled_set if cfg["dataset"] in DATASETS else _captioned_set
        self.num_images, self.load_images, texts, self.positive = build(cfg, ctx)
        ids, mask = ctx.tokenizer.encode(texts, ctx.context_length)
        self.texts = {"text": ids, "text_mask": mask}
        normalize, graphdef = ctx.normalize, ctx.graphdef
        self.scoring = scoring = scoring_for(ctx.model)

        def encode_images(params: dict, batch: Mapping) -> Any:
            model = nnx.merge(graphdef, params)
            return scoring.image_features(model, normalize(batch["image"]))

        def encode_texts(params: dict, batch: Mapping) -> Any:
            return scoring.text_features(nnx.merge(graphdef, params), batch["text"],
                                         batch["text_mask"])

        out = replicated(ctx.mesh)
        self._encode_images = jax.jit(encode_images, out_shardings=out)
        self._encode_texts = jax.jit(encode_texts, out_shardings=out)
        self._scores = jax.jit(scoring.scores, out_shardings=out)

    def run(self, params: dict) -> dict[str, float]:
        """text_retrieval_recall@k and image_retrieval_recall@k for k = 1, 5, 10."""
        size, sharding = self.cfg["batch_size"], self.ctx.batch_sharding
        images = []
        for start in range(0, self.num_images, size):
            batch, real = loaded_global_batch(self.load_images, self.num_images, start, size,
                                              sharding)
            images.append((self._encode_images(params, {"image": batch["image"]}), real))
        texts = []
        for start in range(0, len(self.texts["text"]), size):
            batch, real = padded_global_batch(self.texts, start, size, sharding)
            texts.append((self._encode_texts(params, batch), real))
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


def _labelled_set(cfg: Mapping, ctx: EvalContext) -> tuple:
    """A labelled dataset's images, each with `captions_per_image` captions of its class."""
    images, labels = load_split(cfg["dataset"], cfg["data_dir"] or ctx.data_dir,
                                cfg["split"])
    if cfg["num_images"]:
        images, labels = images[: cfg["num_images"]], labels[: cfg["num_images"]]
    names, templates = caption_vocabulary(cfg["dataset"])
    texts, offsets = caption_texts(names, templates)  # tokenized once, below, as sampled
    rows, image_of_text = sample_image_captions(labels, offsets, cfg["captions_per_image"],
                                                cfg["seed"])
    owner = np.arange(len(labels)) if cfg["relevance"] == "pair" else labels
    positive = owner[:, None] == owner[image_of_text][None, :]
    return len(labels), lambda idx: (images[idx], labels[idx]), [texts[r] for r in rows], positive


def _captioned_set(cfg: Mapping, ctx: EvalContext) -> tuple:
    """COCO / Flickr30k (Karpathy splits): every caption of every image; pair relevance."""
    from vlmjax.data.karpathy_retrieval import captions_of, open_retrieval_split
    from vlmjax.data.tfds_images import BenchmarkImages
    if cfg["relevance"] != "pair":
        raise ValueError(f"{cfg['dataset']} has human captions of each image: use relevance='pair'")
    source = open_retrieval_split(cfg["dataset"], cfg["split"], cfg["data_dir"])
    texts, image_of_text = captions_of(source, cfg["num_images"])
    num_images = int(image_of_text.max()) + 1 if len(image_of_text) else 0
    images = BenchmarkImages(cfg["dataset"], cfg["split"], cfg["data_dir"], ctx.image_size,
                             ctx.channels, limit=num_images, source=source)
    positive = np.arange(num_images)[:, None] == image_of_text[None, :]
    return num_images, images.rows, texts, positive
