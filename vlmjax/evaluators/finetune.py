"""Supervised transfer: fine-tune the image tower with a head initialised from zero-shot.

The head starts as logit scale x the zero-shot class embeddings (so step 0 is zero-shot), the
rest of the pretrained model is locked, and training runs through the same jitted train step
as pre-training (the context's `train_classifier`: explicit shardings over the run's mesh,
donated state, locked parameters get no gradient and no optimizer state update), with the
classification objective.
AdamW with warmup + cosine decay and gradient clipping at 1.0; the defaults follow WiSE-FT's
fine-tuning of CLIP (lr 3e-5, weight decay 0.1, batch 512 there). Images are the split's
evaluation transform (resize + centre crop), without augmentation. Reports test accuracy
after training, and the zero-shot head's accuracy on the same rows for the gain.
"""

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from vlmjax.errors import ConfigError
from vlmjax.evaluators.context import EvalContext, EvalFacts
from vlmjax.evaluators.global_batches import classify_rows, loaded_global_batch
from vlmjax.evaluators.transfer_setup import (
    TransferOptions,
    TransferSetup,
    check_transfer,
    fail_option,
    require_at_least_one,
)
from vlmjax.evaluators.typed_options import options_from
from vlmjax.models.classifier import ZeroShotHeadClassifier
from vlmjax.parallel import mesh as mesh_lib
from vlmjax.parallel.logical import axis_rules

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Options(TransferOptions):
    """config.evals.<name> of kind 'finetune' (WiSE-FT's fine-tuning of CLIP by default)."""

    steps: int = 1000
    train_batch_size: int = 256
    lr: float = 3e-5
    warmup_steps: int = 100
    weight_decay: float = 0.1
    label_smoothing: float = 0.0
    seed: int = 0


def check(name: str, options: Options, facts: EvalFacts) -> None:
    """Readable splits, the zero-shot head available, a training batch over the batch shards."""
    if options.train_batch_size % facts.batch_shards:
        fail_option(name, "train_batch_size", f"= {options.train_batch_size} does not divide over "
                    f"{facts.batch_shards} batch shards", f"use a multiple of {facts.batch_shards}")
    require_at_least_one(name, options, "train_batch_size")
    check_transfer(name, "finetune", options, facts, needs_text=True)


class FineTune:
    """`run(weights)` -> test acc1 / acc5 / mean_per_class_recall after fine-tuning, the
    zero-shot head's acc1 and the gain."""

    def __init__(self, options: Options | Mapping, ctx: EvalContext):
        self.options = o = options_from(Options, options)
        self.ctx = ctx
        self.name = f"finetune/{o.dataset}"
        if ctx.train_classifier is None:
            raise ConfigError("fine-tuning needs an evaluation context that can train (the train "
                              "loop's or vlmjax.evaluate's)")
        self.setup = TransferSetup(o, ctx, needs_text=True,
                                   why="fine-tuning (its head starts as the zero-shot classifier)")
        self.train_source, self.test_source = self.setup.source("train"), self.setup.source("test")
        # The image tower (and its projection) and the head train; the rest stays locked.
        self.trainable = rf"^(head|bias)$|^backbone/{ctx.model.towers['image'].lstrip('^')}"
        self._compiled: tuple | None = None

    def _classifier(self, weights: dict) -> tuple[Any, nnx.State, nnx.State]:
        """(graph, parameters, model state: BatchNorm statistics, or empty) of the backbone
        under a head that predicts what zero-shot does."""
        head = np.exp(np.asarray(weights["logit_scale"])) * self.setup.text_classifier(weights)
        classifier = ZeroShotHeadClassifier(nnx.merge(self.ctx.graphdef, weights), head)
        return nnx.split(classifier, nnx.Param, ...)

    def _compile(self, graphdef: Any, state: nnx.State, model_state: nnx.State) -> tuple:
        """(init, step, top classes) of this classifier, built once per evaluator."""
        if self._compiled is None:
            ctx, k = self.ctx, min(5, self.setup.num_classes)
            init, step = ctx.train_classifier(graphdef, state, self.trainable,
                                              dataclasses.asdict(self.options),
                                              model_state=model_state)

            def top_classes(params: Any, stats: Any, images: jax.Array) -> jax.Array:
                with axis_rules(ctx.mesh, ctx.rules):
                    logits = nnx.merge(graphdef, params, stats)(
                        {"image": ctx.normalize(images)})["logits"]
                return jax.lax.top_k(logits, k)[1]

            top = jax.jit(top_classes, out_shardings=mesh_lib.replicated(ctx.mesh))
            self._compiled = (init, step, top)
        return self._compiled

    def _accuracy(self, top: Any, state: dict) -> dict[str, float]:
        n, load = self.test_source.num_rows, self.test_source.rows
        params, stats = state["params"], state.get("model_state", {})
        return classify_rows(n, load, self.setup.num_classes, self.options.batch_size,
                             self.ctx.batch_sharding, lambda b: top(params, stats, b["image"]),
                             self.name)

    def run(self, weights: dict) -> dict[str, float]:
        o, sharding = self.options, self.ctx.batch_sharding
        graphdef, params, model_state = self._classifier(weights)
        init, step, top = self._compile(graphdef, params, model_state)
        state = init(nnx.to_pure_dict(params), nnx.to_pure_dict(model_state))
        zeroshot = self._accuracy(top, state)["acc1"]
        n, load = self.train_source.num_rows, self.train_source.rows
        batch_size = o.train_batch_size
        rng = np.random.default_rng(o.seed)
        order = np.zeros((0,), np.int64)
        metrics = {}
        for _ in tqdm(range(o.steps), desc=f"{self.name} fine-tune", leave=False,
                      disable=jax.process_index() != 0):
            if len(order) < batch_size:  # epochs of fresh permutations, no partial batches
                order = np.concatenate([order, rng.permutation(n)])
            rows, order = order[:batch_size], order[batch_size:]
            batch, _ = loaded_global_batch(lambda idx, rows=rows: load(rows[idx]), batch_size, 0,
                                           batch_size, sharding)
            state, metrics = step(state, batch)
        out = self._accuracy(top, state)
        return {**out, "zeroshot_head/acc1": zeroshot, "gain": out["acc1"] - zeroshot,
                **({"train_loss": float(metrics["loss"])} if metrics else {})}

