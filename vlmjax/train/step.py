"""The train step: a pure top-level function of (state, batch), jitted once with shardings.

Randomness: the step's key is `fold_in(key(seed), step)`, a function of the step number only,
so a resumed run draws exactly the keys it would have drawn (bit-exact resume); the model gets
it as `model(batch, train=True, rng=key)` (FLIP's patch masking uses it). Non-parameter model
variables (BatchNorm statistics) come in as state["model_state"] and leave updated.
"""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from vlmjax.data.normalization import Normalization
from vlmjax.objectives.objective import Objective
from vlmjax.parallel.logical import Rules, axis_rules, constrain
from vlmjax.train.state import merge_model


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
    normalization: Normalization
    mesh: Mesh
    rules: Rules
    grad_accum_steps: int = 1
    seed: int = 0


def step_key(seed: int, step: jax.Array) -> jax.Array:
    """The random key of training step `step`: the same on every resume."""
    return jax.random.fold_in(jax.random.key(seed), step)


def model_outputs(spec: StepSpec, params: dict, model_state: dict | None,
                  batch: Mapping[str, jax.Array], rng: jax.Array) -> tuple[dict, dict | None]:
    """(model outputs on a batch of uint8 images and tokens, updated model state)."""
    params = jax.tree.map(lambda p, lock: jax.lax.stop_gradient(p) if lock else p, params,
                          spec.locked)  # locked towers get no backward pass at all
    model = merge_model(spec.graphdef, params, model_state)
    outputs = model({**batch, "image": spec.normalization(batch["image"])}, train=True, rng=rng)
    new_state = None if model_state is None else nnx.to_pure_dict(nnx.state(model, nnx.Not(nnx.Param)))
    return outputs, new_state


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


def accumulated_loss_and_grads(spec: StepSpec, params: dict, model_state: dict | None,
                               batch: Mapping[str, jax.Array], rng: jax.Array
                               ) -> tuple[dict, dict, dict | None]:
    """Full-batch loss and gradients, computing the towers over `grad_accum_steps` micro-batches.

    1. Forward every micro-batch without gradients, keeping the model outputs (and threading
       the model state through them in order, as n sequential steps would).
    2. Take the loss over the concatenated outputs (the full global batch) and its gradient
       w.r.t. those outputs.
    3. Re-run each micro-batch (same key) with its slice of that gradient as the cotangent and
       sum the parameter gradients. Batch-major outputs (embeddings) split per micro-batch;
       scalar outputs (temperature, bias) are parameters, so their cotangent enters once.
    Equals the single-pass gradient (GradCache; open_clip's accum_freq) while activations are
    held for one micro-batch at a time.
    """
    n = spec.grad_accum_steps
    micro = {k: split_microbatches(v, n) for k, v in batch.items()}
    keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(n))

    def forward(carry: dict | None, xs: tuple) -> tuple[dict | None, dict]:
        mb, key = xs
        outputs, new_state = model_outputs(spec, params, carry, mb, key)
        return new_state, outputs

    final_state, stacked = jax.lax.scan(forward, model_state, (micro, keys))
    full = {k: merge_microbatches(v) if v.ndim > 1 else v[0] for k, v in stacked.items()}
    loss_fn = lambda outputs: spec.objective.loss(outputs, spec.objective_options, batch)  # noqa: E731
    loss, loss_vjp, metrics = jax.vjp(loss_fn, full, has_aux=True)
    (cotangent,) = loss_vjp(jnp.ones_like(loss))
    per_micro = {k: split_microbatches(v, n) if v.ndim else v for k, v in cotangent.items()}

    def accumulate(grads: dict, xs: tuple) -> tuple[dict, None]:
        i, mb, key = xs
        _, vjp = jax.vjp(lambda p: model_outputs(spec, p, model_state, mb, key)[0], params)
        ct = {k: v[i] if cotangent[k].ndim else jnp.where(i == 0, v, jnp.zeros_like(v))
              for k, v in per_micro.items()}
        (g,) = vjp(ct)
        return jax.tree.map(jnp.add, grads, g), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    grads, _ = jax.lax.scan(accumulate, zeros, (jnp.arange(n), micro, keys))
    return grads, metrics, final_state


def loss_and_grads(spec: StepSpec, params: dict, model_state: dict | None,
                   batch: Mapping[str, jax.Array], rng: jax.Array
                   ) -> tuple[dict, dict, dict | None]:
    """Gradients of the objective on the global batch, its metrics and the new model state."""
    with axis_rules(spec.mesh, spec.rules):
        if spec.grad_accum_steps > 1:
            return accumulated_loss_and_grads(spec, params, model_state, batch, rng)

        def loss_fn(p: dict) -> tuple[jax.Array, tuple[dict, dict | None]]:
            outputs, new_state = model_outputs(spec, p, model_state, batch, rng)
            loss, metrics = spec.objective.loss(outputs, spec.objective_options, batch)
            return loss, (metrics, new_state)

        (_, (metrics, new_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return grads, metrics, new_state


def train_step(spec: StepSpec, state: dict, batch: Mapping[str, jax.Array]
               ) -> tuple[dict, dict[str, jax.Array]]:
    """One optimizer update on the global batch; returns the new state and scalar metrics.

    A non-finite loss or gradient skips the update: params, optimizer and model state stay as
    they were (a `lax.cond` on the device, no host sync), the step counter still advances
    (the batch is consumed) and metrics["update_skipped"] is 1. Not optax.apply_if_finite: it
    checks only gradients and applies the update anyway after its error limit.

    The update runs inside the cond's taken branch, which writes the donated state in place. An
    elementwise `where(finite, new, old)` computes the same values, but it keeps every old
    buffer alive until the select, so XLA copies the whole state (parameters and both Adam
    moments) at the start of every step: 1.8 GB per step for ViT-B/32 CLIP.
    """
    rng = step_key(spec.seed, state["step"])
    grads, metrics, model_state = loss_and_grads(spec, state["params"], state.get("model_state"),
                                                 batch, rng)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
    old = {k: state[k] for k in ("params", "opt_state")}
    if model_state is not None:
        old["model_state"] = state["model_state"]

    def update(old: dict, grads: dict, model_state: dict | None) -> dict:
        updates, opt_state = spec.tx.update(grads, old["opt_state"], old["params"],
                                            grad_norm=grad_norm)
        new = {"params": spec.post_update(optax.apply_updates(old["params"], updates)),
               "opt_state": opt_state}
        if model_state is not None:
            new["model_state"] = model_state
        return new

    def skip(old: dict, grads: dict, model_state: dict | None) -> dict:
        del grads, model_state
        return old

    kept = jax.lax.cond(finite, update, skip, old, grads, model_state)
    metrics = {**metrics, "grad_norm": grad_norm, "learning_rate": spec.schedule(state["step"]),
               "update_skipped": 1 - finite.astype(jnp.int32)}
    return {"step": state["step"] + 1, **kept}, metrics


def jit_train_step(spec: StepSpec, state_sharding: Any, batch_sharding: Any,
                   replicated: Any) -> Callable[[dict, Mapping], tuple[dict, dict]]:
    """`train_step` compiled with explicit in/out shardings and the state donated."""
    return jax.jit(lambda state, batch: train_step(spec, state, batch),
                   in_shardings=(state_sharding, batch_sharding),
                   out_shardings=(state_sharding, replicated), donate_argnums=(0,))
