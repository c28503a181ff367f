"""Zero-shot classification: class embeddings from prompt templates, argmax over classes."""

import logging
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from vlmjax.data.datasets import dataset_prompts, load_split
from vlmjax.evaluators.context import EvalContext, classify_images, padded_global_batch
from vlmjax.models.two_tower import l2_normalize
from vlmjax.parallel.mesh import batch_shards, replicated
from vlmjax.train.step import normalize_images

log = logging.getLogger(__name__)

DEFAULTS = {
    "kind": "zeroshot",
    "dataset": "fashion_mnist",
    "split": "test",
    "data_dir": "",  # "" = config.data.dir
    "batch_size": 1000,
    "classnames_file": "",  # CLIP_benchmark-format JSON {dataset: [names]}
    "templates_file": "",  # CLIP_benchmark-format JSON {dataset: ["a photo of a {c}.", ...]}
}


def class_embeddings(text_embeds: jax.Array, num_classes: int) -> jax.Array:
    """[C * T, e] normalised prompt embeddings (class-major) -> [C, e] renormalised means."""
    per_class = text_embeds.reshape(num_classes, -1, text_embeds.shape[-1])
    return l2_normalize(per_class.mean(axis=1))


def predict_topk(image_embeds: jax.Array, classifier: jax.Array, k: int) -> jax.Array:
    """Indices of the k classes with the highest cosine similarity, best first: [b, k]."""
    return jax.lax.top_k(jnp.einsum("be,ce->bc", image_embeds, classifier), k)[1]


class ZeroShotClassification:
    """Scores every test image against template-ensembled class embeddings."""

    def __init__(self, cfg: Mapping, ctx: EvalContext):
        self.cfg, self.ctx = dict(cfg), ctx
        data = ctx.config["data"]
        self.name = f"zeroshot/{cfg['dataset']}"
        self.classnames, self.templates = dataset_prompts(
            cfg["dataset"], cfg["classnames_file"], cfg["templates_file"])
        prompts = [t.format(c=c) for c in self.classnames for t in self.templates]
        ids, mask = ctx.tokenizer.encode(prompts, ctx.context_length)
        self.prompts = {"text": ids, "text_mask": mask}
        self.images, self.labels = load_split(cfg["dataset"], cfg["data_dir"] or data["dir"],
                                              cfg["split"])
        mean, std, graphdef = data["image_mean"], data["image_std"], ctx.graphdef
        k = min(5, len(self.classnames))

        def encode_text(params: dict, batch: Mapping) -> jax.Array:
            return nnx.merge(graphdef, params).encode_text(batch["text"], batch["text_mask"])

        def top_classes(params: dict, batch: Mapping, classes: jax.Array) -> jax.Array:
            images = normalize_images(batch["image"], mean, std)
            image_embeds = nnx.merge(graphdef, params).encode_image(images)
            return predict_topk(image_embeds, classes, k)

        # Replicated outputs: every process (multi-host) can read the whole result.
        self._encode_text = jax.jit(encode_text, out_shardings=replicated(ctx.mesh))
        self._top_classes = jax.jit(top_classes, out_shardings=replicated(ctx.mesh))

    def classifier(self, params: dict) -> jax.Array:
        """[num_classes, e] zero-shot classifier weights."""
        n = len(self.prompts["text"])
        shards = batch_shards(self.ctx.batch_sharding)
        padded = -(-n // shards) * shards
        batch, _ = padded_global_batch(self.prompts, 0, padded, self.ctx.batch_sharding)
        embeds = jax.device_get(self._encode_text(params, batch))[:n]
        return class_embeddings(jnp.asarray(embeds), len(self.classnames))

    def run(self, params: dict) -> dict[str, float]:
        """acc1, acc5 and mean_per_class_recall of `params` on the configured split."""
        classes = jax.device_put(self.classifier(params), replicated(self.ctx.mesh))
        return classify_images(self.images, self.labels, len(self.classnames),
                               self.cfg["batch_size"], self.ctx.batch_sharding,
                               lambda batch: self._top_classes(params, batch, classes), self.name)
