"""Activation rematerialisation and scan-over-layers for stacks of identical blocks.

A scanned stack is ONE block module whose parameters have a leading layer axis. It is created
with `nnx.vmap` and applied with `nnx.scan`; both get `LAYER_AXIS_METADATA`, which makes flax
prepend the logical axis name "layers" to each parameter's `logical_axes` after creation (and
strip it inside the scan body), so the sharding rules see ("layers", "embed", "mlp") etc.
"""

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

LAYER_AXIS = "layers"
# flax's spmd.add_axis/remove_axis insert/remove the value at the vmapped/scanned index of every
# Variable metadata tuple named by a key here (other than partition_name, which only touches
# flax's own sharding metadata, unused by us).
LAYER_AXIS_METADATA = {nnx.PARTITION_NAME: LAYER_AXIS, "logical_axes": LAYER_AXIS}

# `model.remat` -> jax.checkpoint policy; None means no rematerialisation at all.
REMAT_POLICIES: dict[str, Callable[..., bool] | None] = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}

# Pure-dict keys of an Encoder's layers: unrolled {LAYERS_KEY: {0: ..., 1: ...}}, scanned
# {STACKED_KEY: <one block tree with a leading layer axis>}.
LAYERS_KEY = "layers"
STACKED_KEY = "block"


def remat_policy(name: str) -> Callable[..., bool] | None:
    """The checkpoint policy named by `model.remat` (None for "none")."""
    if name not in REMAT_POLICIES:
        raise ValueError(f"remat must be one of {', '.join(REMAT_POLICIES)}, got {name!r}")
    return REMAT_POLICIES[name]


def create_stacked(make: Callable[[nnx.Rngs], nnx.Module], depth: int,
                   rngs: nnx.Rngs) -> nnx.Module:
    """`depth` independently initialised blocks as one module with a leading "layers" axis."""
    create = nnx.vmap(make, in_axes=0, out_axes=0, transform_metadata=LAYER_AXIS_METADATA)
    return create(rngs.split(depth))


def apply_layers(layers: Any, x: jax.Array, call: Callable[[nnx.Module, jax.Array, Any], jax.Array],
                 extra: Any, *, remat: str, scanned: bool) -> jax.Array:
    """Runs x through the blocks: `call(block, x, extra)` per layer, checkpointed per `remat`.

    `layers` is the stacked block when `scanned`, else a sequence of blocks. `extra` (a pytree,
    e.g. an attention mask) is passed unchanged to every layer.
    """
    policy = remat_policy(remat)
    if policy is not None:
        # Inside a scan the loop already keeps XLA from CSE-ing the recomputation away.
        call = nnx.remat(call, policy=policy, prevent_cse=not scanned)
    if not scanned:
        for layer in layers:
            x = call(layer, x, extra)
        return x
    scan = nnx.scan(call, in_axes=(0, nnx.Carry, None), out_axes=nnx.Carry,
                    transform_metadata=LAYER_AXIS_METADATA)
    return scan(layers, x, extra)


def _is_layer_list(node: Any) -> bool:
    return (isinstance(node, Mapping) and len(node) > 0
            and all(isinstance(k, int) or (isinstance(k, str) and k.isdigit()) for k in node))


def stack_layer_params(params: Mapping) -> dict:
    """Unrolled -> scanned pure-dict params: every {"layers": {0: t0, ..}} becomes {"block": t}.

    The per-layer trees are stacked along a new leading axis (the "layers" logical axis), in
    layer order. Other entries are copied unchanged; works on any nesting depth (both towers).
    """
    out: dict = {}
    for key, value in params.items():
        if key == LAYERS_KEY and _is_layer_list(value):
            ordered = [value[k] for k in sorted(value, key=int)]
            out[STACKED_KEY] = jax.tree.map(lambda *xs: jnp.stack(xs), *ordered)
        elif isinstance(value, Mapping):
            out[key] = stack_layer_params(value)
        else:
            out[key] = value
    return out


def unstack_layer_params(params: Mapping) -> dict:
    """Scanned -> unrolled pure-dict params: the inverse of `stack_layer_params` (int layer keys)."""
    out: dict = {}
    for key, value in params.items():
        if key == STACKED_KEY and isinstance(value, Mapping):
            depth = jax.tree.leaves(value)[0].shape[0]
            out[LAYERS_KEY] = {i: jax.tree.map(lambda a, i=i: a[i], value) for i in range(depth)}
        elif isinstance(value, Mapping):
            out[key] = unstack_layer_params(value)
        else:
            out[key] = value
    return out
