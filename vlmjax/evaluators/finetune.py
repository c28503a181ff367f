"""Supervised transfer: fine-tune the image tower with a head initialised from zero-shot.

The head starts as logit scale x the zero-shot class embeddings (so step 0 is zero-shot), the
rest of the pretrained model is locked, and training runs through the same jitted train step
as pre-training (`train.step`: explicit shardings over the run's mesh, donated state, locked
parameters get no gradient and no optimizer state update), with the classification objective.
AdamW with warmup + cosine decay and gradient clipping at 1.0; the defaults follow WiSE-FT's
fine-tuning of CLIP (lr 3e-5, weight decay 0.1, batch 512 there). Images are the split's
evaluation transform (resize + centre crop), without augmentation. Reports test accuracy
after training, and the zero-shot head's accuracy on the same rows for the gain.
"""

import logging
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from vlmjax.data.eval_sources import eval_rows
from vlmjax.data.prefetch import process_rows, to_global
from vlmjax.evaluators.context import EvalContext, classify_rows, loaded_global_batch
from vlmjax.evaluators.frozen_features import default_data_dir
from vlmjax.evaluators.transfer_setup import COMMON, TransferSetup
from vlmjax.models.classifier import ZeroShotHeadClassifier
from vlmjax.models.registry import get_model_spec
from vlmjax.objectives.classification import CLASSIFICATION
from vlmjax.parallel import mesh as mesh_lib
from vlmjax.parallel.logical import axis_rules
from vlmjax.train.optimizer import decay_mask
from vlmjax.train.param_groups import map_with_path, matches
from vlmjax.train.state import model_builder
from vlmjax.train.step import StepSpec, channel_stats, jit_train_step, normalize_images

log = logging.getLogger(__name__)

DEFAULTS = {
    "kind": "finetune",
    **COMMON,
    "steps": 1000,
    "train_batch_size": 256,
    "lr": 3e-5,
    "warmup_steps": 100,
    "weight_decay": 0.1,
    "label_smoothing": 0.0,
    "seed": 0,
}


class FineTune:
    """`run(params)` -> test acc1 / acc5 / mean_per_class_recall after fine-tuning, the
    zero-shot head's acc1 and the gain."""

    def __init__(self, cfg: Mapping, ctx: EvalContext):
        self.cfg = cfg = {**DEFAULTS, **cfg}
        self.ctx = ctx
        self.name = f"finetune/{cfg['dataset']}"
        self.setup = TransferSetup(cfg, ctx, needs_text=True,
                                   why="fine-tuning (its head starts as the zero-shot classifier)")
        data_dir = default_data_dir(ctx, cfg["dataset"], cfg["data_dir"])
        image = ctx.config["model"]["image"]
        self.train_rows = eval_rows(cfg["dataset"], cfg["train_split"], data_dir, image,
                                    cfg["num_images"], cfg["split_file"])
        self.test_rows = eval_rows(cfg["dataset"], cfg["test_split"], data_dir, image,
                                   cfg["num_images"], cfg["split_file"])
        self._build(ctx, self.setup.num_classes)

    def _build(self, ctx: EvalContext, num_classes: int) -> None:
        cfg, config = self.cfg, ctx.config
        build = model_builder(config, ctx.tokenizer.vocab_size, ctx.context_length)
        embed_dim = config["model"]["embed_dim"]
        abstract = nnx.eval_shape(lambda: ZeroShotHeadClassifier(
            build(nnx.Rngs(0)), jnp.zeros((num_classes, embed_dim))))
        self.graphdef, abstract_state = nnx.split(abstract)
        abstract_params = nnx.to_pure_dict(abstract_state)
        self.param_sharding = mesh_lib.param_shardings(mesh_lib.logical_axes_of(abstract_state),
                                                       ctx.mesh, ctx.rules)
        image_tower = get_model_spec(config["model"]["name"]).towers["image"].lstrip("^")
        trainable = matches(rf"^(head|bias)$|^backbone/{image_tower}", abstract_params)
        locked = jax.tree.map(lambda t: not t, trainable)
        schedule = optax.warmup_cosine_decay_schedule(0.0, cfg["lr"], cfg["warmup_steps"],
                                                      max(cfg["steps"], cfg["warmup_steps"] + 1))
        adamw = optax.adamw(schedule, weight_decay=cfg["weight_decay"],
                            mask=decay_mask(abstract_params, config["optimizer"]["no_decay"]))
        labels = map_with_path(lambda _, t: "train" if t else "locked", trainable)
        self.tx = optax.multi_transform(
            {"train": optax.chain(optax.clip_by_global_norm(1.0), adamw),
             "locked": optax.set_to_zero()}, labels)
        abstract_state_tree = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": abstract_params,
                               "opt_state": jax.eval_shape(self.tx.init, abstract_params)}
        self.state_sharding = mesh_lib.state_shardings(abstract_state_tree, self.param_sharding,
                                                       ctx.mesh)
        data = config["data"]
        spec = StepSpec(graphdef=self.graphdef, objective=CLASSIFICATION,
                        objective_options={"label_smoothing": cfg["label_smoothing"]}, tx=self.tx,
                        schedule=schedule, post_update=lambda p: p, locked=locked,
                        image_mean=channel_stats(data["image_mean"]),
                        image_std=channel_stats(data["image_std"]), mesh=ctx.mesh,
                        rules=ctx.rules)
        replicated = mesh_lib.replicated(ctx.mesh)
        self._step = jit_train_step(spec, self.state_sharding, ctx.batch_sharding, replicated)
        graphdef, k = self.graphdef, min(5, num_classes)

        def top_classes(params: Any, images: jax.Array) -> jax.Array:
            with axis_rules(ctx.mesh, ctx.rules):
                images = normalize_images(images, data["image_mean"], data["image_std"])
                logits = nnx.merge(graphdef, params)(images)["logits"]
            return jax.lax.top_k(logits, k)[1]

        self._top = jax.jit(top_classes, out_shardings=replicated)

    def initial_state(self, params: dict) -> dict:
        """{step 0, classifier params (fresh buffers: the step donates them), optimizer state}."""
        head = np.exp(np.asarray(params["logit_scale"])) * self.setup.text_classifier(params)
        tree = {"backbone": params, "head": jnp.asarray(head),
                "bias": jnp.zeros((head.shape[0],), jnp.float32)}
        copied = jax.jit(lambda t: jax.tree.map(jnp.copy, t),
                         out_shardings=self.param_sharding)(tree)
        opt_state = jax.jit(self.tx.init, out_shardings=self.state_sharding["opt_state"])(copied)
        return {"step": jnp.zeros((), jnp.int32), "params": copied, "opt_state": opt_state}

    def _accuracy(self, params: dict) -> dict[str, float]:
        n, load = self.test_rows
        return classify_rows(n, load, self.setup.num_classes, self.cfg["batch_size"],
                             self.ctx.batch_sharding, lambda b: self._top(params, b["image"]),
                             self.name)

    def run(self, params: dict) -> dict[str, float]:
        cfg, sharding = self.cfg, self.ctx.batch_sharding
        state = self.initial_state(params)
        zeroshot = self._accuracy(state["params"])["acc1"]
        n, load = self.train_rows
        batch_size = cfg["train_batch_size"]
        rng = np.random.default_rng(cfg["seed"])
        order = np.zeros((0,), np.int64)
        text = np.zeros((len(np.arange(batch_size)[process_rows(sharding, batch_size)]), 1), np.int32)
        metrics = {}
        for _ in tqdm(range(cfg["steps"]), desc=f"{self.name} fine-tune", leave=False,
                      disable=jax.process_index() != 0):
            if len(order) < batch_size:  # epochs of fresh permutations, no partial batches
                order = np.concatenate([order, rng.permutation(n)])
            rows, order = order[:batch_size], order[batch_size:]
            batch, _ = loaded_global_batch(lambda idx, rows=rows: load(rows[idx]), batch_size, 0,
                                           batch_size, sharding)
            # The train step feeds the model text inputs; the classifier ignores them.
            batch |= to_global({"text": text, "text_mask": text}, sharding)
            state, metrics = self._step(state, batch)
        out = self._accuracy(state["params"])
        return {**out, "zeroshot_head/acc1": zeroshot, "gain": out["acc1"] - zeroshot,
                **({"train_loss": float(metrics["loss"])} if metrics else {})}
