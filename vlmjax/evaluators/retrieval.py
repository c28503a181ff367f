"""Image-text retrieval: recall@1/5/10 in both directions, scored as the model family scores pairs.

Sets (`data.eval_sources`): captioned ones such as COCO and Flickr30k in Karpathy's splits
(every human caption of each image, pair relevance), or a labelled one (`captions_per_image`
captions of each image's class, pair or class relevance). CLIP-like models rank by cosine of
pooled embeddings, FILIP by its token-wise similarities (s_I for image->text, s_T for
text->image), chosen from the checkpoint's model family (`evaluators.scoring`).
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from vlmjax.data.captions import caption_texts, sample_image_captions
from vlmjax.data.eval_sources import EvalSource, captioned, eval_prompts, is_on_disk
from vlmjax.errors import ConfigError
from vlmjax.evaluators.context import EvalContext, EvalFacts
from vlmjax.evaluators.global_batches import loaded_global_batch, padded_global_batch
from vlmjax.evaluators.metrics import retrieval_metrics
from vlmjax.evaluators.scoring import scoring_for
from vlmjax.evaluators.typed_options import options_from
from vlmjax.options import fail
from vlmjax.parallel.mesh import replicated

RELEVANCE = ("pair", "class")


@dataclasses.dataclass(frozen=True)
class Options:
    """config.evals.<name> of kind 'retrieval'."""

    dataset: str = "fashion_mnist"  # a captioned benchmark (coco, flickr30k) or a labelled set
    split: str = "test"
    # "" = config.data.dir (on-disk datasets) or TFDS's default (benchmarks)
    data_dir: str = ""
    num_images: int = 1000  # the first N images of the split; 0 = all (Karpathy test: 5k / 1k)
    captions_per_image: int = 5  # labelled sets: class captions drawn per image
    batch_size: int = 500
    seed: int = 0  # which class captions each image gets
    # "pair": a caption is relevant to its own image only (COCO / Flickr30k protocol);
    # "class": to every image of its class (metric learning's Recall@k). Captions of a
    # labelled dataset describe the class, not the image, so "pair" mostly measures ties there.
    relevance: str = "pair"
    # Labelled benchmarks: the class names / templates their class captions use.
    classnames_file: str = ""
    templates_file: str = ""


def check(name: str, options: Options, facts: EvalFacts) -> None:
    """Known relevance, the set readable (human-captioned sets need pair relevance)."""
    o = options
    if o.relevance not in RELEVANCE:
        fail(f"evals.{name}.relevance", f"is {o.relevance!r}",
             "choose 'pair' (own captions) or 'class' (captions of the same class)")
    facts.check_source(name, o.dataset, o.split, o.data_dir, labels=False)
    if captioned(o.dataset):
        if o.relevance != "pair":
            fail(f"evals.{name}.relevance", f"='{o.relevance}' but {o.dataset} has human "
                 "captions of each image", "use relevance='pair'")
    elif not is_on_disk(o.dataset):  # a labelled benchmark's class captions come from its prompts
        eval_prompts(o.dataset, o.classnames_file, o.templates_file)


class Retrieval:
    """Scores every image against every caption, then recall@k both ways."""

    def __init__(self, options: Options | Mapping, ctx: EvalContext):
        self.options = o = options_from(Options, options)
        self.ctx = ctx
        self.name = f"retrieval/{o.dataset}"
        if o.relevance not in RELEVANCE:
            raise ConfigError(f"relevance must be one of {RELEVANCE}, got {o.relevance!r}")
        self.source = ctx.open_source(o.dataset, o.split, o.data_dir, o.num_images,
                                      classnames_file=o.classnames_file,
                                      templates_file=o.templates_file)
        texts, self.positive = retrieval_set(self.source, o)
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
        size, sharding = self.options.batch_size, self.ctx.batch_sharding
        num_images = self.source.num_rows
        images = []
        for start in range(0, num_images, size):
            batch, real = loaded_global_batch(self.source.rows, num_images, start, size, sharding)
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


def retrieval_set(source: EvalSource, options: Options) -> tuple[list[str], np.ndarray]:
    """(texts, positive [num_rows, num_texts]): every human caption of each image (pair
    relevance), or `captions_per_image` captions of each image's class drawn with `seed`."""
    captions = source.image_captions()
    if captions is not None:
        if options.relevance != "pair":
            raise ConfigError(f"{source.dataset} has human captions of each image: use "
                              "relevance='pair'")
        return captions.texts, np.arange(source.num_rows)[:, None] == captions.image[None, :]
    labels = source.labels()
    vocabulary = source.class_captions()
    texts, offsets = caption_texts(vocabulary.names, vocabulary.templates)
    fewest = int(np.diff(offsets).min())
    if options.captions_per_image > fewest:
        raise ConfigError(f"captions_per_image={options.captions_per_image} but {source.dataset} "
                          f"has {fewest} distinct captions of some class; use at most {fewest}")
    rows, image_of_text = sample_image_captions(labels, offsets, options.captions_per_image,
                                                options.seed)
    owner = np.arange(len(labels)) if options.relevance == "pair" else labels
    positive = owner[:, None] == owner[image_of_text][None, :]
    return [texts[r] for r in rows], positive
