"""Zero-shot classification by caption likelihood (big_vision's CapPa scoring classifier).

Each class is scored by how likely the captioner finds its prompts given the image: the summed
log-probability of the prompt's tokens after the start token, averaged over the first
`num_templates` templates. No contrastive head is used, so this measures the captioner itself.
Cost grows with images x classes x templates (one decoder pass per pair), hence the defaults of
one template and an optional cap on the number of images.
"""

from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from vlmjax.data.datasets import check_dataset, dataset_prompts, load_split
from vlmjax.evaluators.context import EvalContext, EvalFacts, classify_images
from vlmjax.objectives.coca import sequence_log_likelihood
from vlmjax.options import fail
from vlmjax.parallel.mesh import replicated

DEFAULTS = {
    "kind": "caption_zeroshot",
    "dataset": "fashion_mnist",
    "split": "test",
    "data_dir": "",  # "" = config.data.dir
    "batch_size": 200,  # images per step; each is paired with every class prompt
    "num_templates": 1,  # the first n templates of the dataset (0 = all)
    "num_images": 0,  # score only the first n images of the split (0 = all)
    "classnames_file": "",
    "templates_file": "",
}


def prompt_scores(log_likelihoods: jax.Array, num_classes: int) -> jax.Array:
    """[b, C * T] prompt log-likelihoods (class-major) -> [b, C] per-class template means."""
    return log_likelihoods.reshape(log_likelihoods.shape[0], num_classes, -1).mean(axis=-1)



def check(name: str, cfg: Mapping, facts: EvalFacts) -> None:
    """A captioning model and a readable labelled split."""
    if "captions" not in facts.capabilities:
        fail(f"evals.{name}.kind", f"='caption_zeroshot' needs a model that captions (model.name "
             f"'coca'), but model.name={facts.model_name!r} cannot",
             "use kind 'zeroshot' for contrastive models")
    check_dataset(cfg["dataset"], cfg["data_dir"] or facts.data_dir,
                  key=f"evals.{name}.data_dir" if cfg["data_dir"] else "data.dir", split=cfg["split"])


class CaptionZeroShotClassification:
    """Predicts the class whose prompts the captioner finds most likely for each image."""

    def __init__(self, cfg: Mapping, ctx: EvalContext):
        ctx.model.require("captions", "evals kind 'caption_zeroshot'",
                          "use kind 'zeroshot' for contrastive models")
        self.cfg, self.ctx = dict(cfg), ctx
        self.name = f"caption_zeroshot/{cfg['dataset']}"
        self.classnames, templates = dataset_prompts(cfg["dataset"], cfg["classnames_file"],
                                                     cfg["templates_file"])
        self.templates = templates[: cfg["num_templates"]] if cfg["num_templates"] else templates
        prompts = [t.format(c=c) for c in self.classnames for t in self.templates]
        ids, mask = ctx.tokenizer.encode(prompts, ctx.context_length)
        self.prompt_ids, self.prompt_mask = jnp.asarray(ids), jnp.asarray(mask)
        images, labels = load_split(cfg["dataset"], cfg["data_dir"] or ctx.data_dir, cfg["split"])
        limit = cfg["num_images"] or len(labels)
        self.images, self.labels = images[:limit], labels[:limit]
        normalize, graphdef = ctx.normalize, ctx.graphdef
        num_classes, k = len(self.classnames), min(5, len(self.classnames))

        def top_classes(params: dict, batch: Mapping, ids: jax.Array, mask: jax.Array) -> jax.Array:
            model = nnx.merge(graphdef, params)
            _, caption_tokens = model.image_features(normalize(batch["image"]))
            b, p = caption_tokens.shape[0], ids.shape[0]
            tokens = jnp.repeat(caption_tokens, p, axis=0)  # [b * p, q, d], image-major
            pair_ids, pair_mask = jnp.tile(ids, (b, 1)), jnp.tile(mask, (b, 1))
            logits = model.decode(tokens, pair_ids, pair_mask)
            scores = prompt_scores(sequence_log_likelihood(logits, pair_ids, pair_mask).reshape(b, p),
                                   num_classes)
            return jax.lax.top_k(scores, k)[1]

        self._top_classes = jax.jit(top_classes, out_shardings=replicated(ctx.mesh))

    def run(self, params: dict) -> dict[str, float]:
        """acc1, acc5 and mean_per_class_recall of caption-likelihood predictions."""
        return classify_images(
            self.images, self.labels, len(self.classnames), self.cfg["batch_size"],
            self.ctx.batch_sharding,
            lambda batch: self._top_classes(params, batch, self.prompt_ids, self.prompt_mask),
            self.name)
