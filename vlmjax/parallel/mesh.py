"""The device mesh and the shardings of parameters, optimizer state and batches."""

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vlmjax.errors import ConfigError
from vlmjax.parallel.logical import Rules, logical_to_spec

MESH_AXES = ("data", "fsdp", "tensor")


def _fail(key: str, problem: str, fix: str) -> None:
    raise ConfigError(f"config.{key} {problem}; {fix}")


def resolve_mesh_shape(mesh_cfg: Mapping, num_devices: int) -> dict[str, int]:
    """Mesh axis sizes (`config.mesh`) with the single -1 replaced by the remaining devices."""
    sizes = {axis: int(mesh_cfg[axis]) for axis in MESH_AXES}
    free = [a for a, s in sizes.items() if s == -1]
    if len(free) > 1:
        _fail("mesh", f"has -1 on several axes ({', '.join(free)})", "use -1 on at most one axis")
    for axis, size in sizes.items():
        if size == 0 or size < -1:
            _fail(f"mesh.{axis}", f"is {size}", "use a positive size or -1 for the rest")
    fixed = math.prod(size for size in sizes.values() if size > 0)
    if free:
        if num_devices % fixed:
            _fail("mesh", f"fixed axes multiply to {fixed}, which does not divide the "
                  f"{num_devices} devices", "pick sizes whose product divides the device count")
        sizes[free[0]] = num_devices // fixed
    elif fixed != num_devices:
        _fail("mesh", f"sizes multiply to {fixed} but there are {num_devices} devices",
              "make the product equal the device count, or set one axis to -1")
    return sizes


def make_mesh(mesh_cfg: Mapping, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over all devices, sizes from the config (-1 = the rest)."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = resolve_mesh_shape(mesh_cfg, len(devices))
    shape = tuple(sizes[a] for a in MESH_AXES)
    # Auto axes: jit's sharding propagation (GSPMD) places intermediates; we constrain only
    # where it matters, through the logical rules.
    return jax.make_mesh(shape, MESH_AXES, devices=devices,
                         axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def logical_axes_of(abstract_state: nnx.State) -> dict:
    """Pure-dict tree (like `nnx.to_pure_dict`) of each parameter's logical axis names."""
    out: dict = {}
    for path, variable in nnx.to_flat_state(abstract_state):
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        axes = variable.get_metadata().get("logical_axes")
        shape = tuple(variable.shape)
        node[path[-1]] = _Axes(axes if axes is not None else (None,) * len(shape), shape=shape)
    return out


class _Axes(tuple):
    """A tuple of axis names (plus the parameter's shape) that pytree utilities treat as a leaf."""

    def __new__(cls, axes: Sequence[str | None], shape: tuple[int, ...] | None = None) -> "_Axes":
        obj = super().__new__(cls, axes)
        obj.shape = shape
        return obj


jax.tree_util.register_pytree_node(
    _Axes, lambda a: ((), (tuple(a), a.shape)), lambda aux, _: _Axes(aux[0], shape=aux[1]))


def fit_spec(spec: PartitionSpec, shape: tuple[int, ...] | None, mesh: Mesh) -> PartitionSpec:
    """Drops mesh axes from dimensions they do not divide (those dimensions stay whole).

    Rules name axes by meaning, not size: a 10-class head or an odd vocabulary must still
    lay out on a 4-way fsdp mesh. `replicated_bytes` lists what this left whole.
    """
    if shape is None:
        return spec
    out = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)), strict=True):
        names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        kept: list[str] = []
        for name in names:
            if dim % (math.prod(mesh.shape[a] for a in kept) * mesh.shape[name]) == 0:
                kept.append(name)
        out.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    return PartitionSpec(*out)


def param_shardings(axes_tree: dict, mesh: Mesh, rules: Rules) -> dict:
    """NamedSharding of every parameter from its logical axes and the rules."""
    return jax.tree.map(
        lambda axes: NamedSharding(mesh, fit_spec(logical_to_spec(tuple(axes), rules), axes.shape, mesh)),
        axes_tree, is_leaf=lambda x: isinstance(x, _Axes))


def replicated_bytes(axes_tree: dict, shardings: dict, min_bytes: int) -> list[tuple[str, int]]:
    """(path, bytes) of float32 parameters of at least `min_bytes` that every device holds whole."""
    out = []
    leaves = jax.tree_util.tree_flatten_with_path(axes_tree, is_leaf=lambda x: isinstance(x, _Axes))[0]
    for (path, axes), sharding in zip(leaves, jax.tree.leaves(shardings), strict=True):
        size = 4 * math.prod(axes.shape or ())
        if size >= min_bytes and sharding.is_fully_replicated:
            out.append(("/".join(str(getattr(k, "key", k)) for k in path), size))
    return out


def batch_sharding(mesh: Mesh, rules: Rules) -> NamedSharding:
    """Batch-major arrays are split over the mesh axes that the "batch" rule names."""
    return NamedSharding(mesh, logical_to_spec(("batch",), rules))


def batch_shards(sharding: NamedSharding) -> int:
    """How many pieces a batch-sharded array is split into (batch sizes must divide by it)."""
    axes = sharding.spec[0] if len(sharding.spec) else None
    if axes is None:
        return 1
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    return math.prod(sharding.mesh.shape[a] for a in axes)


def replicated(mesh: Mesh) -> NamedSharding:
    """A sharding that keeps a full copy on every device."""
    return NamedSharding(mesh, PartitionSpec())


def state_shardings(abstract_state: Any, params_sharding: dict, mesh: Mesh) -> Any:
    """Shardings of the {step, params, opt_state} of a train state: optimizer moments follow
    their params, other optimizer leaves (counts) are replicated."""
    params_struct = jax.tree.structure(params_sharding)

    def follow(subtree: Any) -> Any:
        if jax.tree.structure(subtree) == params_struct:
            return params_sharding
        return jax.tree.map(lambda _: replicated(mesh), subtree)

    opt = jax.tree.map(follow, abstract_state["opt_state"],
                       is_leaf=lambda x: jax.tree.structure(x) == params_struct)
    return {"step": replicated(mesh), "params": params_sharding, "opt_state": opt}
