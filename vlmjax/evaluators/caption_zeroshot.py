"""Zero-shot classification by caption likelihood (big_vision's CapPa scoring classifier).

Each class is scored by how likely the captioner finds its prompts given the image: the summed
log-probability of the prompt's tokens after the start token, averaged over the first
`num_templates` templates. No contrastive head is used, so this measures the captioner itself.
Cost grows with images x classes x templates (one decoder pass per pair), hence the defaults of
one template and an optional cap on the number of images.
"""

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from vlmjax.data.eval_sources import eval_prompts
from vlmjax.evaluators.context import EvalContext, EvalFacts
from vlmjax.evaluators.global_batches import classify_rows
from vlmjax.evaluators.typed_options import options_from
from vlmjax.objectives.coca import sequence_log_likelihood
from vlmjax.options import fail
from vlmjax.parallel.mesh import replicated


@dataclasses.dataclass(frozen=True)
class Options:
    """config.evals.<name> of kind 'caption_zeroshot'."""

    dataset: str = "fashion_mnist"  # an on-disk dataset or a registered labelled benchmark
    split: str = "test"
    data_dir: str = ""  # "" = config.data.dir (on-disk datasets) or TFDS's default (benchmarks)
    batch_size: int = 200  # images per step; each is paired with every class prompt
    num_templates: int = 1  # the first n templates of the dataset (0 = all)
    num_images: int = 0  # score only the first n images of the split (0 = all)
    classnames_file: str = ""
    templates_file: str = ""
    split_file: str = ""  # benchmarks: CoOp's split file (or its folder)


def prompt_scores(log_likelihoods: jax.Array, num_classes: int) -> jax.Array:
    """[b, C * T] prompt log-likelihoods (class-major) -> [b, C] per-class template means."""
    return log_likelihoods.reshape(log_likelihoods.shape[0], num_classes, -1).mean(axis=-1)



def check(name: str, options: Options, facts: EvalFacts) -> None:
    """A captioning model, a readable labelled split and complete prompts."""
    o = options
    if "captions" not in facts.capabilities:
        fail(f"evals.{name}.kind", f"='caption_zeroshot' needs a model that captions (model.name "
             f"'coca'), but model.name={facts.model_name!r} cannot",
             "use kind 'zeroshot' for contrastive models")
    facts.check_source(name, o.dataset, o.split, o.data_dir, o.split_file)
    eval_prompts(o.dataset, o.classnames_file, o.templates_file, o.split_file)


class CaptionZeroShotClassification:
    """Predicts the class whose prompts the captioner finds most likely for each image."""

    def __init__(self, options: Options | Mapping, ctx: EvalContext):
        ctx.model.require("captions", "evals kind 'caption_zeroshot'",
                          "use kind 'zeroshot' for contrastive models")
        self.options = o = options_from(Options, options)
        self.ctx = ctx
        self.name = f"caption_zeroshot/{o.dataset}"
        self.source = ctx.open_source(o.dataset, o.split, o.data_dir, o.num_images, o.split_file,
                                      o.classnames_file, o.templates_file)
        self.classnames, templates = self.source.classnames, self.source.templates
        self.templates = templates[: o.num_templates] if o.num_templates else templates
        prompts = [t.format(c=c) for c in self.classnames for t in self.templates]
        ids, mask = ctx.tokenizer.encode(prompts, ctx.context_length)
        self.prompt_ids, self.prompt_mask = jnp.asarray(ids), jnp.asarray(mask)
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
        return classify_rows(
            self.source.num_rows, self.source.rows, len(self.classnames), self.options.batch_size,
            self.ctx.batch_sharding,
            lambda batch: self._top_classes(params, batch, self.prompt_ids, self.prompt_mask),
            self.name)
