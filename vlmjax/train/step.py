"""The train step: a pure top-level function of (state, batch), jitted once with shardings."""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from vlmjax.objectives.registry import Objective
from vlmjax.parallel.logical import Rules, axis_rules


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """Everything static the step needs; hashable identity keeps one compiled program."""

    graphdef: Any
    objective: Objective
    objective_options: Mapping
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    post_update: Callable[[dict], dict]
    locked: Any  # bool tree like params: True for parameters of a locked (LiT) tower
    image_mean: float
    image_std: float
    mesh: Mesh
    rules: Rules


def normalize_images(images: jax.Array, mean: float, std: float) -> jax.Array:
    """uint8 [b, H, W, c] -> float32 (x / 255 - mean) / std, done on device."""
    return (images.astype(jnp.float32) / 255.0 - mean) / std


def model_outputs(graphdef: Any, params: dict, batch: Mapping[str, jax.Array],
                  mean: float, std: float) -> dict[str, jax.Array]:
    """Runs the model on a batch of uint8 images and tokens."""
    model = nnx.merge(graphdef, params)
    return model(normalize_images(batch["image"], mean, std), batch["text"], batch["text_mask"])


def train_step(spec: StepSpec, state: dict, batch: Mapping[str, jax.Array]
               ) -> tuple[dict, dict[str, jax.Array]]:
    """One optimizer update on the global batch; returns the new state and scalar metrics."""

    def loss_fn(params: dict) -> tuple[jax.Array, dict]:
        # Locked towers get no gradient at all, so their backward pass is never computed.
        params = jax.tree.map(lambda p, lock: jax.lax.stop_gradient(p) if lock else p,
                              params, spec.locked)
        outputs = model_outputs(spec.graphdef, params, batch, spec.image_mean, spec.image_std)
        return spec.objective.loss(outputs, spec.objective_options)

    with axis_rules(spec.mesh, spec.rules):
        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = spec.tx.update(grads, state["opt_state"], state["params"])
    params = spec.post_update(optax.apply_updates(state["params"], updates))
    metrics = {**metrics, "grad_norm": optax.global_norm(grads),
               "learning_rate": spec.schedule(state["step"])}
    return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, metrics


def jit_train_step(spec: StepSpec, state_sharding: Any, batch_sharding: Any,
                   replicated: Any) -> Callable[[dict, Mapping], tuple[dict, dict]]:
    """`train_step` compiled with explicit in/out shardings and the state donated."""
    return jax.jit(lambda state, batch: train_step(spec, state, batch),
                   in_shardings=(state_sharding, batch_sharding),
                   out_shardings=(state_sharding, replicated), donate_argnums=(0,))
