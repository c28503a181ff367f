"""Captioning on a held-out labelled split: BLEU-4, CIDEr-D, and how often captions name the class.

Captions are generated (greedy by default, or beam search) for the first `num_images` images;
references are `num_references` captions of each image's class built from the dataset's
caption paraphrases and templates (these sets have no human captions). `class_named` is the
fraction of generated captions that name exactly the image's class.
"""

import logging
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from vlmjax.data.captions import caption_texts
from vlmjax.data.datasets import caption_vocabulary, check_dataset, load_split
from vlmjax.errors import ConfigError
from vlmjax.evaluators.caption_metrics import caption_metrics
from vlmjax.evaluators.caption_naming import class_patterns, named_class, reference_captions
from vlmjax.evaluators.context import EvalContext, EvalFacts
from vlmjax.generation.coca_cache import generate_captions
from vlmjax.options import fail

log = logging.getLogger(__name__)

DEFAULTS = {
    "kind": "captioning",
    "dataset": "fashion_mnist",
    "split": "test",
    "data_dir": "",  # "" = config.data.dir
    "batch_size": 500,
    "num_images": 1000,  # 0 = the whole split
    "num_references": 5,
    "method": "greedy",  # greedy | beam
    "num_beams": 4,
    "max_len": 0,  # 0 = context_length - 1
}



def check(name: str, cfg: Mapping, facts: EvalFacts) -> None:
    """A captioning model and a readable labelled split."""
    if "captions" not in facts.capabilities:
        fail(f"evals.{name}.kind", f"='captioning' needs a model that captions (model.name "
             f"'coca'), but model.name={facts.model_name!r} cannot",
             "use kind 'zeroshot' for contrastive models")
    check_dataset(cfg["dataset"], cfg["data_dir"] or facts.data_dir,
                  key=f"evals.{name}.data_dir" if cfg["data_dir"] else "data.dir", split=cfg["split"])


class Captioning:
    """Generates captions for held-out images and scores them against class captions."""

    def __init__(self, cfg: Mapping, ctx: EvalContext):
        ctx.model.require("captions", "evals kind 'captioning'", "use kind 'zeroshot' or "
                          "'retrieval' for contrastive models")
        if cfg["method"] not in ("greedy", "beam"):
            raise ConfigError(f"captioning method={cfg['method']!r}; choose 'greedy' or 'beam' "
                              "(evaluation is deterministic)")
        self.cfg, self.ctx = dict(cfg), ctx
        self.name = f"captioning/{cfg['dataset']}"
        images, labels = load_split(cfg["dataset"], cfg["data_dir"] or ctx.data_dir, cfg["split"])
        limit = cfg["num_images"] or len(labels)
        self.images, self.labels = images[:limit], labels[:limit]
        names, templates = caption_vocabulary(cfg["dataset"])
        texts, offsets = caption_texts(names, templates)
        self.references = reference_captions(self.labels, texts, offsets, cfg["num_references"])
        self.patterns = class_patterns(names)

    def captions(self, params: dict) -> list[str]:
        """Generated captions of the evaluated images, in order."""
        out: list[str] = []
        bs, max_len = self.cfg["batch_size"], self.cfg["max_len"] or None
        for start in tqdm(range(0, len(self.labels), bs), desc=self.name, leave=False,
                          disable=jax.process_index() != 0):
            images = self.ctx.normalize(jnp.asarray(self.images[start: start + bs]))
            out.extend(generate_captions(self.ctx.graphdef, params, images, self.ctx.tokenizer,
                                         method=self.cfg["method"], max_len=max_len,
                                         num_beams=self.cfg["num_beams"]))
        return out

    def run(self, params: dict) -> dict[str, float]:
        """bleu4, cider_d and class_named of greedy (or beam) captions."""
        generated = self.captions(params)
        named = np.array([named_class(c, self.patterns) for c in generated])
        log.info("%s examples: %s", self.name, generated[:5])
        return {**caption_metrics(generated, self.references),
                "class_named": float(np.mean(named == self.labels))}
