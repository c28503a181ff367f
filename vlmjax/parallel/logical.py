"""Logical axis names -> mesh shardings, for parameters and activations.

Modules annotate parameters (`logical_axes` metadata) and activations (`constrain`) with
logical names such as "batch" or "mlp"; the rules in the config map them to mesh axes.
Outside an `axis_rules` context `constrain` is the identity, so models also run un-sharded.
"""

import contextlib
import contextvars
from collections.abc import Iterator, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

Rules = Sequence[tuple[str, str | Sequence[str] | None]]
_CONTEXT: contextvars.ContextVar[tuple[Mesh, Rules] | None] = contextvars.ContextVar(
    "vlmjax_axis_rules", default=None)


def logical_to_spec(axes: Sequence[str | None] | None, rules: Rules) -> PartitionSpec:
    """Maps logical axis names to a PartitionSpec; a mesh axis is used at most once."""
    if axes is None:
        return PartitionSpec()
    table = {name: target for name, target in rules}
    used: set[str] = set()
    out = []
    for name in axes:
        target = table.get(name) if name is not None else None
        if target is None:
            out.append(None)
            continue
        targets = (target,) if isinstance(target, str) else tuple(target)
        targets = tuple(t for t in targets if t not in used)
        used.update(targets)
        out.append(targets[0] if len(targets) == 1 else (targets or None))
    return PartitionSpec(*out)


@contextlib.contextmanager
def axis_rules(mesh: Mesh, rules: Rules) -> Iterator[None]:
    """Within this context `constrain` lays activations out on `mesh` by `rules`."""
    token = _CONTEXT.set((mesh, tuple(rules)))
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """Sharding constraint on an activation by logical axis names (identity without rules)."""
    context = _CONTEXT.get()
    if context is None:
        return x
    mesh, rules = context
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_to_spec(axes, rules)))


def current_mesh_axes(logical: str) -> tuple[Mesh, tuple[str, ...]] | None:
    """Inside `axis_rules`: the mesh and the mesh axes that `logical` maps to; else None.

    Losses with explicit collectives (ring variants under `shard_map`) use this to find the
    axes the batch is split over.
    """
    context = _CONTEXT.get()
    if context is None:
        return None
    mesh, rules = context
    axes = logical_to_spec((logical,), rules)[0]
    if axes is None:
        return mesh, ()
    return mesh, (axes,) if isinstance(axes, str) else tuple(axes)
