"""Zero-shot classification on an on-disk dataset or a registered benchmark: prompts -> classes."""

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vlmjax.data.datasets import DATASETS
from vlmjax.data.eval_sources import check_eval_dataset, eval_prompts, eval_rows
from vlmjax.evaluators.context import (
    EvalContext,
    EvalFacts,
    classify_rows,
    padded_global_batch,
    save_npz_atomically,
)
from vlmjax.evaluators.scoring import TOKEN_DIRECTIONS, EmbeddingScoring, scoring_for
from vlmjax.options import fail
from vlmjax.parallel.mesh import batch_shards, replicated

log = logging.getLogger(__name__)

DEFAULTS = {
    "kind": "zeroshot",
    "dataset": "fashion_mnist",
    "split": "test",
    "data_dir": "",  # "" = config.data.dir (on-disk datasets) or TFDS's default (benchmarks)
    "batch_size": 1000,  # images (and prompts) per batch
    "num_images": 0,  # evaluate the first N images only; 0 = all
    "classnames_file": "",  # CLIP_benchmark-format JSON {dataset: [names]}
    "templates_file": "",  # CLIP_benchmark-format JSON {dataset: ["a photo of a {c}.", ...]}
    # Benchmarks only: CoOp's split_zhou_<Name>.json (or its folder): CoOp's rows, labels, names.
    "split_file": "",
    # Token-wise (FILIP) models only: rank classes by s_I ("i2t", the direction that scores an
    # image against texts), s_T ("t2i") or their mean.
    "token_direction": "i2t",
}



def check(name: str, cfg: Mapping, facts: EvalFacts) -> None:
    """The split readable, the prompts complete, a known token-wise direction."""
    if cfg["token_direction"] not in TOKEN_DIRECTIONS:
        fail(f"evals.{name}.token_direction", f"is {cfg['token_direction']!r}",
             f"choose one of {', '.join(map(repr, TOKEN_DIRECTIONS))}")
    on_disk = cfg["dataset"] in DATASETS
    key = f"evals.{name}.data_dir" if cfg["data_dir"] else "data.dir"
    check_eval_dataset(cfg["dataset"], cfg["split"], cfg["data_dir"] or (facts.data_dir if on_disk else ""),
                       key, cfg["split_file"])
    eval_prompts(cfg["dataset"], cfg["classnames_file"], cfg["templates_file"], cfg["split_file"])


def class_embeddings(text_embeds: jax.Array, num_classes: int) -> jax.Array:
    """[C * T, e] normalised prompt embeddings (class-major) -> [C, e] renormalised means."""
    return EmbeddingScoring().classifier(text_embeds, num_classes)


def predict_topk(image_embeds: jax.Array, classifier: jax.Array, k: int) -> jax.Array:
    """Indices of the k classes with the highest cosine similarity, best first: [b, k]."""
    return jax.lax.top_k(EmbeddingScoring().class_scores(image_embeds, classifier), k)[1]


class ZeroShotClassification:
    """Scores every test image against every class's prompts, ensembled over templates.

    The model family decides how (`evaluators.scoring`): averaged prompt embeddings for CLIP-like
    models, averaged token-wise similarities for FILIP.
    """

    def __init__(self, cfg: Mapping, ctx: EvalContext):
        cfg = {**DEFAULTS, **cfg}
        self.cfg, self.ctx = cfg, ctx
        self.name = f"zeroshot/{cfg['dataset']}"
        self.classnames, self.templates = eval_prompts(
            cfg["dataset"], cfg["classnames_file"], cfg["templates_file"], cfg["split_file"])
        prompts = [t.format(c=c) for c in self.classnames for t in self.templates]
        ids, mask = ctx.tokenizer.encode(prompts, ctx.context_length)
        self.prompts = {"text": ids, "text_mask": mask}
        # On-disk datasets default to config.data.dir; benchmarks to TFDS's data_dir.
        data_dir = ctx.default_data_dir(cfg["dataset"], cfg["data_dir"])
        self.num_rows, self.load_rows = eval_rows(cfg["dataset"], cfg["split"], data_dir,
                                                  ctx.image, cfg["num_images"], cfg["split_file"])
        normalize, graphdef = ctx.normalize, ctx.graphdef
        self.scoring = scoring = scoring_for(ctx.model, cfg["token_direction"])
        k = min(5, len(self.classnames))

        def encode_text(params: dict, batch: Mapping) -> Any:
            model = nnx.merge(graphdef, params)
            return scoring.text_features(model, batch["text"], batch["text_mask"])

        def top_classes(params: dict, batch: Mapping, classifier: Any) -> jax.Array:
            images = normalize(batch["image"])
            features = scoring.image_features(nnx.merge(graphdef, params), images)
            return jax.lax.top_k(scoring.class_scores(features, classifier), k)[1]

        # Replicated outputs: every process (multi-host) can read the whole result.
        self._encode_text = jax.jit(encode_text, out_shardings=replicated(ctx.mesh))
        self._top_classes = jax.jit(top_classes, out_shardings=replicated(ctx.mesh))

    def classifier(self, params: dict) -> Any:
        """The zero-shot classifier: [num_classes, e] weights, or prompt tokens by class."""
        path = self._cache_path()
        if path and os.path.isfile(path):
            with np.load(path) as cached:
                features = {k: jnp.asarray(v) for k, v in cached.items()}
            log.info("%s: class-prompt features from %s", self.name, path)
        else:
            features = self._prompt_features(params)
            if path and jax.process_index() == 0:
                save_npz_atomically(path, features)
        features = features["embeds"] if set(features) == {"embeds"} else features
        return self.scoring.classifier(features, len(self.classnames))

    def _cache_path(self) -> str:
        """Cache file of this checkpoint's prompt features: keyed by everything they depend on."""
        if not (self.ctx.cache_dir and self.ctx.checkpoint):
            return ""
        key = hashlib.sha256()
        for part in (self.cfg["dataset"], self.ctx.model.name,
                     json.dumps([self.classnames, self.templates])):
            key.update(part.encode())
        key.update(np.ascontiguousarray(self.prompts["text"]).tobytes())
        key.update(np.ascontiguousarray(self.prompts["text_mask"]).tobytes())
        return os.path.join(self.ctx.cache_dir, "zeroshot", f"{self.cfg['dataset']}_"
                            f"{self.ctx.checkpoint}_{key.hexdigest()[:16]}.npz")

    def _prompt_features(self, params: dict) -> dict[str, jax.Array]:
        """Features of every prompt, in batches: {"embeds"} or the token-wise leaves."""
        n = len(self.prompts["text"])
        shards = batch_shards(self.ctx.batch_sharding)
        size = -(-min(n, self.cfg["batch_size"]) // shards) * shards  # prompts per batch
        chunks = []
        for start in range(0, n, size):
            batch, real = padded_global_batch(self.prompts, start, size, self.ctx.batch_sharding)
            chunks.append(jax.tree.map(lambda a, real=real: jax.device_get(a)[:real],
                                       self._encode_text(params, batch)))
        features = jax.tree.map(lambda *parts: jnp.asarray(np.concatenate(parts)), *chunks)
        return features if isinstance(features, dict) else {"embeds": features}

    def run(self, params: dict) -> dict[str, float]:
        """acc1, acc5 and mean_per_class_recall of `params` on the configured split."""
        classes = jax.device_put(self.classifier(params), replicated(self.ctx.mesh))
        return classify_rows(self.num_rows, self.load_rows, len(self.classnames),
                             self.cfg["batch_size"], self.ctx.batch_sharding,
                             lambda batch: self._top_classes(params, batch, classes), self.name)
