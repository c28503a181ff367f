"""Supervised training of a classifier through the one train step: the `train_classifier`
service that evaluation contexts hand to fine-tuning (`evaluators.finetune`).

AdamW with linear warmup and cosine decay, gradient clipping at 1.0, weight decay on the
parameters the run's `optimizer.no_decay` does not exempt; parameters outside `trainable` are
locked (no gradient, no optimizer state update); the loss is `objectives.classification`.
"""

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from vlmjax.data.normalization import Normalization
from vlmjax.objectives.classification import CLASSIFICATION
from vlmjax.parallel import mesh as mesh_lib
from vlmjax.parallel.logical import Rules
from vlmjax.train.optimizer import decay_mask
from vlmjax.train.param_groups import map_with_path, matches
from vlmjax.train.step import StepSpec, jit_train_step


def classifier_trainer(mesh: Mesh, rules: Rules, normalization: Normalization, no_decay: str,
                       seed: int = 0) -> Callable[..., tuple[Callable, Callable]]:
    """The `ClassifierTrainer` of a run (its mesh, preprocessing and weight-decay rule)."""
    return functools.partial(_build, mesh=mesh, rules=rules, normalization=normalization,
                             no_decay=no_decay, seed=seed)


def _build(graphdef: Any, abstract_params: nnx.State, trainable: str, options: Mapping, *, mesh: Mesh,
           rules: Rules, normalization: Normalization, no_decay: str, seed: int,
           model_state: nnx.State | None = None) -> tuple[Callable, Callable]:
    params = nnx.to_pure_dict(abstract_params)
    param_sharding = mesh_lib.param_shardings(mesh_lib.logical_axes_of(abstract_params), mesh, rules)
    train = matches(trainable, params)
    locked = jax.tree.map(lambda t: not t, train)
    steps, warmup = options["steps"], options["warmup_steps"]
    schedule = optax.warmup_cosine_decay_schedule(0.0, options["lr"], warmup, max(steps, warmup + 1))
    adamw = optax.adamw(schedule, weight_decay=options["weight_decay"],
                        mask=decay_mask(params, no_decay))
    labels = map_with_path(lambda _, t: "train" if t else "locked", train)
    tx = optax.multi_transform({"train": optax.chain(optax.clip_by_global_norm(1.0), adamw),
                                "locked": optax.set_to_zero()}, labels)
    abstract_tree = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": params,
                     "opt_state": jax.eval_shape(tx.init, params)}
    state_sharding = mesh_lib.state_shardings(abstract_tree, param_sharding, mesh)
    # Non-parameter variables (BatchNorm statistics) ride along, updated by training steps.
    with_state = model_state is not None and bool(jax.tree.leaves(nnx.to_pure_dict(model_state)))
    if with_state:
        state_sharding["model_state"] = mesh_lib.param_shardings(
            mesh_lib.logical_axes_of(model_state), mesh, rules)
    spec = StepSpec(graphdef=graphdef, objective=CLASSIFICATION,
                    objective_options={"label_smoothing": options["label_smoothing"]}, tx=tx,
                    schedule=schedule, post_update=lambda p: p, locked=locked,
                    normalization=normalization, mesh=mesh, rules=rules, seed=seed)
    step = jit_train_step(spec, state_sharding, mesh_lib.batch_sharding(mesh, rules),
                          mesh_lib.replicated(mesh))

    def init(initial_params: Any, initial_model_state: Any = None) -> dict:
        """Step 0: copies of the parameters and model state (the step donates them) and a
        fresh optimizer."""
        copy = lambda t: jax.tree.map(jnp.copy, t)  # noqa: E731
        copied = jax.jit(copy, out_shardings=param_sharding)(initial_params)
        opt_state = jax.jit(tx.init, out_shardings=state_sharding["opt_state"])(copied)
        state = {"step": jnp.zeros((), jnp.int32), "params": copied, "opt_state": opt_state}
        if with_state:
            state["model_state"] = jax.jit(copy, out_shardings=state_sharding["model_state"])(
                initial_model_state)
        return state

    return init, step
