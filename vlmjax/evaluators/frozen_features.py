"""Frozen image features of a dataset split, extracted once per checkpoint and cached on disk.

Transfer evaluators (linear probe, few-shot, unsupervised) learn from features, not pixels.
Extraction runs sharded over the mesh like zero-shot evaluation (each process decodes the rows
its devices hold, the padded last batch is dropped). When a saved checkpoint is evaluated, the
features are cached under workdir/cache/features, keyed by checkpoint, dataset, split and
preprocessing (image size, channels, normalisation, row limit), so every method and every
later evaluation of that checkpoint reuses them.
"""

import hashlib
import json
import logging
import os
from typing import Any

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from vlmjax.data.eval_sources import EvalSource
from vlmjax.evaluators.context import EvalContext
from vlmjax.evaluators.global_batches import loaded_global_batch, replicate
from vlmjax.evaluators.npz_cache import load_npz, save_npz_atomically
from vlmjax.parallel.mesh import batch_shards, replicated

log = logging.getLogger(__name__)


class FeatureExtractor:
    """`features(params, dataset, split) -> (float32 [N, e] L2-normalised embeddings, labels)`.

    The features are the model's pooled, normalised image embeddings: the space its text
    classifier lives in, which Tip-Adapter, CoOp and pseudo-labelling need, and what
    CLIP_benchmark's linear probe uses.
    """

    def __init__(self, ctx: EvalContext, batch_size: int, data_dir: str = "", limit: int = 0,
                 split_file: str = ""):
        self.ctx, self.data_dir, self.limit, self.split_file = ctx, data_dir, limit, split_file
        self._sources: dict[tuple[str, str], EvalSource] = {}
        shards = batch_shards(ctx.batch_sharding)
        self.batch_size = -(-batch_size // shards) * shards
        normalize, graphdef = ctx.normalize, ctx.graphdef

        def encode(params: Any, images: jax.Array) -> jax.Array:
            return nnx.merge(graphdef, params).encode_image(normalize(images))

        self._encode = jax.jit(encode, out_shardings=replicated(ctx.mesh))

    def source(self, dataset: str, split: str) -> EvalSource:
        """The split's eval source (opened once per extractor)."""
        if (dataset, split) not in self._sources:
            self._sources[dataset, split] = self.ctx.open_source(
                dataset, split, self.data_dir, self.limit, self.split_file)
        return self._sources[dataset, split]

    def _cache_path(self, dataset: str, split: str) -> str:
        ctx = self.ctx
        if not (ctx.cache_dir and ctx.checkpoint):
            return ""
        preprocessing = {"model": ctx.model.name, "size": ctx.image_size,
                         "channels": ctx.channels, "mean": ctx.normalize.mean,
                         "std": ctx.normalize.std, "limit": self.limit,
                         "data_dir": ctx.default_data_dir(dataset, self.data_dir),
                         "split_file": os.path.abspath(self.split_file) if self.split_file else ""}
        key = hashlib.sha256(json.dumps(preprocessing, sort_keys=True).encode()).hexdigest()[:16]
        return os.path.join(ctx.cache_dir, "features", f"{dataset}_{split}_{ctx.checkpoint}_{key}.npz")

    def features(self, params: Any, dataset: str, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Features and int labels of every row of the split (the first `limit` if set)."""
        path = self._cache_path(dataset, split)
        cached = load_npz(path)
        if cached is not None:
            log.info("features of %s/%s from %s", dataset, split, path)
            return cached["features"], cached["labels"]
        features, labels = self._extract(params, dataset, split)
        if path and jax.process_index() == 0:
            save_npz_atomically(path, {"features": features, "labels": labels})
        return features, labels

    def _extract(self, params: Any, dataset: str, split: str) -> tuple[np.ndarray, np.ndarray]:
        source = self.source(dataset, split)
        num_rows, load_rows = source.num_rows, source.rows
        features, labels = [], []
        for start in tqdm(range(0, num_rows, self.batch_size), desc=f"features {dataset}/{split}",
                          leave=False, disable=jax.process_index() != 0):
            batch, real = loaded_global_batch(load_rows, num_rows, start, self.batch_size,
                                              self.ctx.batch_sharding)
            features.append(np.asarray(self._encode(params, batch["image"]))[:real])
            labels.append(np.asarray(replicate(batch["label"]))[:real])
        return np.concatenate(features).astype(np.float32), np.concatenate(labels).astype(np.int64)
