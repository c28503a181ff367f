"""Zero-shot classification on an on-disk dataset or a registered benchmark: prompts -> classes."""

import dataclasses
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

from vlmjax.data.eval_sources import eval_prompts
from vlmjax.evaluators.context import EvalContext, EvalFacts
from vlmjax.evaluators.global_batches import classify_rows, padded_global_batch
from vlmjax.evaluators.npz_cache import load_npz, save_npz_atomically
from vlmjax.evaluators.scoring import TOKEN_DIRECTIONS, EmbeddingScoring, scoring_for
from vlmjax.evaluators.typed_options import options_from
from vlmjax.options import fail
from vlmjax.parallel.mesh import batch_shards, replicated

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Options:
    """config.evals.<name> of kind 'zeroshot'."""

    dataset: str = "fashion_mnist"  # an on-disk dataset or a registered benchmark
    split: str = "test"
    data_dir: str = ""  # "" = config.data.dir (on-disk datasets) or TFDS's default (benchmarks)
    batch_size: int = 1000  # images (and prompts) per batch
    num_images: int = 0  # evaluate the first N images only; 0 = all
    classnames_file: str = ""  # CLIP_benchmark-format JSON {dataset: [names]}
    templates_file: str = ""  # CLIP_benchmark-format JSON {dataset: ["a photo of a {c}.", ...]}
    # Benchmarks only: CoOp's split_zhou_<Name>.json (or its folder): CoOp's rows, labels, names.
    split_file: str = ""
    # Token-wise (FILIP) models only: rank classes by s_I ("i2t", the direction that scores an
    # image against texts), s_T ("t2i") or their mean.
    token_direction: str = "i2t"


def check(name: str, options: Options, facts: EvalFacts) -> None:
    """The split readable at the model's image size, the prompts complete, a known token-wise
    direction."""
    if options.token_direction not in TOKEN_DIRECTIONS:
        fail(f"evals.{name}.token_direction", f"is {options.token_direction!r}",
             f"choose one of {', '.join(map(repr, TOKEN_DIRECTIONS))}")
    facts.check_source(name, options.dataset, options.split, options.data_dir, options.split_file)
    eval_prompts(options.dataset, options.classnames_file, options.templates_file, options.split_file)


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

    def __init__(self, options: Options | Mapping, ctx: EvalContext):
        self.options = o = options_from(Options, options)
        self.ctx = ctx
        self.name = f"zeroshot/{o.dataset}"
        self.source = ctx.open_source(o.dataset, o.split, o.data_dir, o.num_images, o.split_file,
                                      o.classnames_file, o.templates_file)
        self.classnames, self.templates = self.source.classnames, self.source.templates
        prompts = [t.format(c=c) for c in self.classnames for t in self.templates]
        ids, mask = ctx.tokenizer.encode(prompts, ctx.context_length)
        self.prompts = {"text": ids, "text_mask": mask}
        normalize, graphdef = ctx.normalize, ctx.graphdef
        self.scoring = scoring = scoring_for(ctx.model, o.token_direction)
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
        cached = load_npz(path)
        if cached is not None:
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
        for part in (self.options.dataset, self.ctx.model.name,
                     json.dumps([self.classnames, self.templates])):
            key.update(part.encode())
        key.update(np.ascontiguousarray(self.prompts["text"]).tobytes())
        key.update(np.ascontiguousarray(self.prompts["text_mask"]).tobytes())
        return os.path.join(self.ctx.cache_dir, "zeroshot", f"{self.options.dataset}_"
                            f"{self.ctx.checkpoint}_{key.hexdigest()[:16]}.npz")

    def _prompt_features(self, params: dict) -> dict[str, jax.Array]:
        """Features of every prompt, in batches: {"embeds"} or the token-wise leaves."""
        n = len(self.prompts["text"])
        shards = batch_shards(self.ctx.batch_sharding)
        size = -(-min(n, self.options.batch_size) // shards) * shards  # prompts per batch
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
        return classify_rows(self.source.num_rows, self.source.rows, len(self.classnames),
                             self.options.batch_size, self.ctx.batch_sharding,
                             lambda batch: self._top_classes(params, batch, classes), self.name)
