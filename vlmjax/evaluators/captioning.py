"""Captioning on a held-out split: BLEU-4, CIDEr-D, and (labelled sets) how often captions name the class.

Captions are generated (greedy by default, or beam search) for the first `num_images` images of
any eval source (`data.eval_sources`). References are every human caption of the image on a
captioned set (COCO, Flickr30k), as COCO's caption evaluation uses them; a labelled set has no
human captions, so its references are `num_references` captions of the image's class, drawn
from its class captions (an on-disk dataset's paraphrases x caption templates, a benchmark's
class names x prompt templates). `class_named` (labelled sets) is the fraction of generated
captions that name exactly the image's class.
"""

import dataclasses
import logging
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from vlmjax.data.captions import caption_texts
from vlmjax.data.eval_sources import captioned, eval_prompts, is_on_disk
from vlmjax.errors import ConfigError
from vlmjax.evaluators.caption_metrics import caption_metrics
from vlmjax.evaluators.caption_naming import class_patterns, named_class, reference_captions
from vlmjax.evaluators.context import EvalContext, EvalFacts
from vlmjax.evaluators.typed_options import options_from
from vlmjax.generation.coca_cache import generate_captions
from vlmjax.options import fail

log = logging.getLogger(__name__)
METHODS = ("greedy", "beam")


@dataclasses.dataclass(frozen=True)
class Options:
    """config.evals.<name> of kind 'captioning'."""

    dataset: str = "fashion_mnist"  # a labelled set or a captioned benchmark (coco, flickr30k)
    split: str = "test"
    data_dir: str = ""  # "" = config.data.dir (on-disk datasets) or TFDS's default (benchmarks)
    batch_size: int = 500
    num_images: int = 1000  # 0 = the whole split
    num_references: int = 5  # labelled sets: class captions drawn per image
    method: str = "greedy"  # greedy | beam
    num_beams: int = 4
    max_len: int = 0  # 0 = context_length - 1
    # Labelled benchmarks: the class names / templates their class captions use.
    classnames_file: str = ""
    templates_file: str = ""


def check(name: str, options: Options, facts: EvalFacts) -> None:
    """A captioning model, a known method and a readable split."""
    o = options
    if "captions" not in facts.capabilities:
        fail(f"evals.{name}.kind", f"='captioning' needs a model that captions (model.name "
             f"'coca'), but model.name={facts.model_name!r} cannot",
             "use kind 'zeroshot' for contrastive models")
    if o.method not in METHODS:
        fail(f"evals.{name}.method", f"is {o.method!r}",
             "choose 'greedy' or 'beam' (evaluation is deterministic)")
    facts.check_source(name, o.dataset, o.split, o.data_dir, labels=False)
    if not is_on_disk(o.dataset) and not captioned(o.dataset):
        eval_prompts(o.dataset, o.classnames_file, o.templates_file)


class Captioning:
    """Generates captions for held-out images and scores them against their references."""

    def __init__(self, options: Options | Mapping, ctx: EvalContext):
        ctx.model.require("captions", "evals kind 'captioning'", "use kind 'zeroshot' or "
                          "'retrieval' for contrastive models")
        self.options = o = options_from(Options, options)
        if o.method not in METHODS:
            raise ConfigError(f"captioning method={o.method!r}; choose 'greedy' or 'beam' "
                              "(evaluation is deterministic)")
        self.ctx = ctx
        self.name = f"captioning/{o.dataset}"
        self.source = ctx.open_source(o.dataset, o.split, o.data_dir, o.num_images,
                                      classnames_file=o.classnames_file,
                                      templates_file=o.templates_file)
        human = self.source.image_captions()
        self.labels, self.patterns = None, None
        if human is not None:
            self.references = [[] for _ in range(self.source.num_rows)]
            for text, row in zip(human.texts, human.image, strict=True):
                self.references[row].append(text)
        else:
            self.labels = self.source.labels()
            vocabulary = self.source.class_captions()
            texts, offsets = caption_texts(vocabulary.names, vocabulary.templates)
            self.references = reference_captions(self.labels, texts, offsets, o.num_references)
            self.patterns = class_patterns(vocabulary.names)

    def captions(self, params: dict) -> list[str]:
        """Generated captions of the evaluated images, in order."""
        out: list[str] = []
        o, n = self.options, self.source.num_rows
        for start in tqdm(range(0, n, o.batch_size), desc=self.name, leave=False,
                          disable=jax.process_index() != 0):
            images, _ = self.source.rows(np.arange(start, min(start + o.batch_size, n)))
            out.extend(generate_captions(self.ctx.graphdef, params,
                                         self.ctx.normalize(jnp.asarray(images)),
                                         self.ctx.tokenizer, method=o.method,
                                         max_len=o.max_len or None, num_beams=o.num_beams))
        return out

    def run(self, params: dict) -> dict[str, float]:
        """bleu4 and cider_d of greedy (or beam) captions, and class_named on labelled sets."""
        generated = self.captions(params)
        log.info("%s examples: %s", self.name, generated[:5])
        metrics = caption_metrics(generated, self.references)
        if self.patterns is not None:
            named = np.array([named_class(c, self.patterns) for c in generated])
            metrics["class_named"] = float(np.mean(named == self.labels))
        return metrics
