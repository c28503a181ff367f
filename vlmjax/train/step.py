"""The train step: a pure top-level function of (state, batch), jitted once with shardings."""

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from vlmjax.objectives.registry import Objective
from vlmjax.parallel.logical import Rules, axis_rules, constrain


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
    image_mean: float | tuple[float, ...]  # one value, or one per channel
    image_std: float | tuple[float, ...]
    mesh: Mesh
    rules: Rules
    grad_accum_steps: int = 1


def channel_stats(value: float | Sequence[float]) -> float | tuple[float, ...]:
    """A config's image_mean/std as a float or a tuple (lists from JSON are unhashable)."""
    return tuple(float(v) for v in value) if isinstance(value, (list, tuple)) else float(value)


def normalize_images(images: jax.Array, mean: float | Sequence[float],
                     std: float | Sequence[float]) -> jax.Array:
    """uint8 [b, H, W, c] -> float32 (x / 255 - mean) / std, done on device.

    mean and std are scalars or per-channel sequences (broadcast over the last axis).
    """
    mean, std = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
    return (images.astype(jnp.float32) / 255.0 - mean) / std


def model_outputs(graphdef: Any, params: dict, batch: Mapping[str, jax.Array],
                  mean: float | Sequence[float], std: float | Sequence[float]
                  ) -> dict[str, jax.Array]:
    """Runs the model on a batch of uint8 images and tokens."""
    model = nnx.merge(graphdef, params)
    return model(normalize_images(batch["image"], mean, std), batch["text"], batch["text_mask"])


def _with_locked(spec: StepSpec, params: dict) -> dict:
    # Locked towers get no gradient at all, so their backward pass is never computed.
    return jax.tree.map(lambda p, lock: jax.lax.stop_gradient(p) if lock else p, params, spec.locked)


def _outputs(spec: StepSpec, params: dict, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    return model_outputs(spec.graphdef, _with_locked(spec, params), batch, spec.image_mean,
                         spec.image_std)


def split_microbatches(x: jax.Array, n: int) -> jax.Array:
    """[B, ...] -> [n, B / n, ...]; micro-batch i holds rows i, i + n, i + 2n, ...

    Strided rather than contiguous so every device keeps its own rows (a device's block of
    B / devices rows holds B / (n * devices) rows of each micro-batch): no data moves.
    """
    x = x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1)
    return constrain(x, (None, "batch") + (None,) * (x.ndim - 2))


def merge_microbatches(x: jax.Array) -> jax.Array:
    """Inverse of `split_microbatches` for one array: [n, B / n, ...] -> [B, ...] in batch order."""
    x = x.swapaxes(0, 1)
    return constrain(x.reshape(-1, *x.shape[2:]), ("batch",) + (None,) * (x.ndim - 2))


def accumulated_loss_and_grads(spec: StepSpec, params: dict, batch: Mapping[str, jax.Array]
                               ) -> tuple[dict, dict]:
    """Full-batch loss and gradients, computing the towers over `grad_accum_steps` micro-batches.

    1. Forward every micro-batch without gradients and keep only the model outputs.
    2. Take the loss over the concatenated outputs (the full global batch) and its gradient
       w.r.t. those outputs.
    3. Re-run each micro-batch with its slice of that gradient as the cotangent and sum the
       parameter gradients. Batch-major outputs (embeddings) split per micro-batch; scalar
       outputs (temperature, bias) are parameters, so their cotangent enters once.
    Equals the single-pass gradient (GradCache; open_clip's accum_freq) while activations are
    held for one micro-batch at a time.
    """
    n = spec.grad_accum_steps
    micro = {k: split_microbatches(v, n) for k, v in batch.items()}
    stacked = jax.lax.map(lambda mb: _outputs(spec, params, mb), micro)
    full = {k: merge_microbatches(v) if v.ndim > 1 else v[0] for k, v in stacked.items()}
    loss_fn = lambda outputs: spec.objective.loss(outputs, spec.objective_options, batch)  # noqa: E731
    loss, loss_vjp, metrics = jax.vjp(loss_fn, full, has_aux=True)
    (cotangent,) = loss_vjp(jnp.ones_like(loss))
    per_micro = {k: split_microbatches(v, n) if v.ndim else v for k, v in cotangent.items()}

    def accumulate(grads: dict, index_and_batch: tuple) -> tuple[dict, None]:
        i, mb = index_and_batch
        _, vjp = jax.vjp(lambda p: _outputs(spec, p, mb), params)
        ct = {k: v[i] if cotangent[k].ndim else jnp.where(i == 0, v, jnp.zeros_like(v))
              for k, v in per_micro.items()}
        (g,) = vjp(ct)
        return jax.tree.map(jnp.add, grads, g), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    grads, _ = jax.lax.scan(accumulate, zeros, (jnp.arange(n), micro))
    return grads, metrics


def loss_and_grads(spec: StepSpec, params: dict, batch: Mapping[str, jax.Array]) -> tuple[dict, dict]:
    """Gradients of the objective on the global batch, and its metrics."""
    with axis_rules(spec.mesh, spec.rules):
        if spec.grad_accum_steps > 1:
            return accumulated_loss_and_grads(spec, params, batch)

        def loss_fn(p: dict) -> tuple[jax.Array, dict]:
            return spec.objective.loss(_outputs(spec, p, batch), spec.objective_options, batch)

        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return grads, metrics


def train_step(spec: StepSpec, state: dict, batch: Mapping[str, jax.Array]
               ) -> tuple[dict, dict[str, jax.Array]]:
    """One optimizer update on the global batch; returns the new state and scalar metrics.

    A non-finite loss or gradient skips the update: params and optimizer state stay as they
    were (a select fused into the update, no host sync), the step counter still advances (the
    batch is consumed) and metrics["update_skipped"] is 1. Not optax.apply_if_finite: it checks
    only gradients and applies the update anyway after its error limit.
    """
    grads, metrics = loss_and_grads(spec, state["params"], batch)
    updates, opt_state = spec.tx.update(grads, state["opt_state"], state["params"])
    params = spec.post_update(optax.apply_updates(state["params"], updates))
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
    params, opt_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                                     (params, opt_state), (state["params"], state["opt_state"]))
    metrics = {**metrics, "grad_norm": grad_norm, "learning_rate": spec.schedule(state["step"]),
               "update_skipped": 1 - finite.astype(jnp.int32)}
    return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, metrics


def jit_train_step(spec: StepSpec, state_sharding: Any, batch_sharding: Any,
                   replicated: Any) -> Callable[[dict, Mapping], tuple[dict, dict]]:
    """`train_step` compiled with explicit in/out shardings and the state donated."""
    return jax.jit(lambda state, batch: train_step(spec, state, batch),
                   in_shardings=(state_sharding, batch_sharding),
                   out_shardings=(state_sharding, replicated), donate_argnums=(0,))
