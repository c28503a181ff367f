"""The optimizer against optax's own transformations: the clip that reads the step's gradient
norm, and the whole update (clip, AdamW with its decay mask, schedule) with the state layout
checkpoints hold."""

import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vlmjax.train.optimizer import clip_by_known_norm, decay_mask, make_optimizer, make_schedule


def _tree(seed: int, scale: float = 1.0) -> dict:
    rng = np.random.default_rng(seed)
    return {"w": jnp.asarray(rng.normal(size=(4, 3)) * scale, jnp.float32),
            "b": jnp.asarray(rng.normal(size=(3,)) * scale, jnp.float32),
            "t": jnp.asarray(rng.normal() * scale, jnp.float32)}


@pytest.mark.parametrize("scale", [0.05, 3.0])  # below and above the bound
def test_clip_by_known_norm_is_optax_clip_by_global_norm(scale):
    grads = _tree(0, scale)
    want, _ = optax.clip_by_global_norm(1.0).update(grads, optax.EmptyState())
    clip = clip_by_known_norm(1.0)
    for norm in (None, optax.global_norm(grads)):
        got, state = clip.update(grads, clip.init(grads), grad_norm=norm)
        for k in grads:  # the norm may be summed in another order: a few float32 roundings
            np.testing.assert_allclose(got[k], want[k], rtol=4 * np.finfo(np.float32).eps)
        assert state == optax.EmptyState()


def test_update_and_state_are_optax_chain_of_clip_and_adamw():
    config = {"optimizer": {"lr": 1e-2, "b1": 0.9, "b2": 0.98, "eps": 1e-6,
                            "weight_decay": 0.1, "no_decay": "", "grad_clip_norm": 1.0,
                            "schedule": "cosine", "warmup_steps": 2, "end_lr_ratio": 0.1},
              "train": {"num_steps": 10, "locked_tower": ""}}
    params = _tree(1)
    tx, _ = make_optimizer(config, params, {})
    opt = config["optimizer"]
    reference = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(
        make_schedule(opt, 10), b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.1,
        mask=decay_mask(params, "")))
    state, ref_state = tx.init(params), reference.init(params)
    assert jax.tree.structure(state) == jax.tree.structure(ref_state)  # checkpoints restore
    ref_params = params
    for step in range(4):
        grads = _tree(10 + step, 2.0 if step % 2 else 0.1)
        updates, state = tx.update(grads, state, params, grad_norm=optax.global_norm(grads))
        params = optax.apply_updates(params, updates)
        ref_updates, ref_state = reference.update(grads, ref_state, ref_params)
        ref_params = optax.apply_updates(ref_params, ref_updates)
    for k in params:  # float32 rounding of a few updates of size lr
        np.testing.assert_allclose(params[k], ref_params[k], rtol=1e-6, atol=1e-7)


def test_clipped_update_makes_one_pass_per_state_array():
    """The compiled clip + AdamW update writes each parameter-sized array once: the new first
    and second moments and the new parameter. optax's per-element select of t / norm made
    XLA write the divided gradient too (read again by both moments)."""
    config = {"optimizer": {"lr": 1e-2, "b1": 0.9, "b2": 0.98, "eps": 1e-6,
                            "weight_decay": 0.1, "no_decay": "", "grad_clip_norm": 1.0,
                            "schedule": "cosine", "warmup_steps": 2, "end_lr_ratio": 0.1},
              "train": {"num_steps": 10, "locked_tower": ""}}
    params = {"w": jnp.ones((300, 200))}
    tx, _ = make_optimizer(config, params, {})

    def update(params: dict, grads: dict, state: Any) -> tuple[dict, Any]:
        updates, state = tx.update(grads, state, params, grad_norm=optax.global_norm(grads))
        return optax.apply_updates(params, updates), state

    hlo = jax.jit(update, donate_argnums=(0, 2)).lower(params, params, tx.init(params))
    entry = hlo.compile().as_text()
    entry = entry[entry.index("\nENTRY"):]
    written = [op for op in re.findall(r"= f32\[300,200\]\S* (\w+)\(", entry) if op != "parameter"]
    assert len(written) == 3, written
