"""A ring over the mesh axes that split the batch: local image chunks stay, text chunks travel.

Blockwise losses are written once as per-device code against a `Ring`: with one batch shard
(no `axis_rules` context, or batch axes of total size 1) every method is the identity and the
code is exactly the single-device chunked computation; otherwise it runs under `jax.shard_map`
and the visiting chunks (with their column statistics or gradient accumulators) hop with
`jax.lax.ppermute`, so no device ever holds all texts.
"""

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec

from vlmjax.parallel.logical import current_mesh_axes

# (staying state, visiting inputs, visiting accumulators) -> (staying state, visiting accumulators)
BlockFn = Callable[[Any, Any, Any], tuple[Any, Any]]


@dataclasses.dataclass(frozen=True)
class Ring:
    """The mesh and the batch axes the batch is split over; `size` 1 means no ring at all."""

    mesh: Mesh | None = None
    axes: tuple[str, ...] = ()
    size: int = 1

    @property
    def batch_spec(self) -> PartitionSpec:
        """Spec of batch-major arrays: dimension 0 split over the batch axes (replicated elsewhere)."""
        return PartitionSpec(self.axes) if self.size > 1 else PartitionSpec()

    def shard(self, fn: Callable, in_specs: Any, out_specs: Any) -> Callable:
        """`fn` run per device on its batch shard; `fn` itself when there is one shard."""
        if self.size == 1:
            return fn
        # check_vma off: these functions are never differentiated by JAX (the losses are
        # custom_vjp with a shard_map'ed backward), and every output with spec P() is psum'ed.
        return jax.shard_map(fn, mesh=self.mesh, in_specs=in_specs, out_specs=out_specs,
                             check_vma=False)

    def index(self) -> jax.Array:
        """This device's position along the batch axes (0 without a ring)."""
        return jax.lax.axis_index(self.axes) if self.size > 1 else jnp.int32(0)

    def psum(self, x: Any) -> Any:
        """Sum over the batch shards."""
        return jax.lax.psum(x, self.axes) if self.size > 1 else x

    def shift(self, tree: Any) -> Any:
        """Sends `tree` to the next device along the ring (device p receives p - 1's)."""
        perm = [(i, (i + 1) % self.size) for i in range(self.size)]
        return jax.lax.ppermute(tree, self.axes, perm)

    def rotate(self, block: BlockFn, stay: Any, visitor_in: Any, visitor_acc: Any) -> tuple[Any, Any]:
        """Runs `block` once per batch shard as the visitors go round; returns (stay, visitor_acc).

        n - 1 hops of (inputs, accumulators) under lax.scan, then one hop of the accumulators
        alone brings each shard's accumulators back to the device that owns it.
        """
        if self.size == 1:
            return block(stay, visitor_in, visitor_acc)

        def step(carry: tuple[Any, Any, Any], _: None) -> tuple[tuple[Any, Any, Any], None]:
            stay, v_in, v_acc = carry
            stay, v_acc = block(stay, v_in, v_acc)
            v_in, v_acc = self.shift((v_in, v_acc))
            return (stay, v_in, v_acc), None

        (stay, v_in, v_acc), _ = jax.lax.scan(step, (stay, visitor_in, visitor_acc),
                                              length=self.size - 1)
        stay, v_acc = block(stay, v_in, v_acc)
        return stay, self.shift(v_acc)


NO_RING = Ring()


def batch_ring() -> Ring:
    """The ring over the mesh axes that the "batch" logical axis maps to in the current
    `axis_rules` context; `NO_RING` (plain chunked computation) outside one."""
    found = current_mesh_axes("batch")
    if found is None:
        return NO_RING
    mesh, axes = found
    size = math.prod(mesh.shape[a] for a in axes)
    return Ring(mesh, axes, size) if size > 1 else NO_RING


def check_divisible(batch: int, ring: Ring) -> None:
    """Raises ValueError if the global batch does not split evenly over the ring."""
    if batch % ring.size:
        raise ValueError(f"ring contrastive loss: batch {batch} does not split over the "
                         f"{ring.size} batch shards of mesh axes {ring.axes}")
