"""A jittable Hungarian matcher: the minimum-cost assignment of rows to distinct columns.

DETR / OWL-ViT match every ground-truth box to one prediction by the Hungarian algorithm. SciPy's
`linear_sum_assignment` runs on the host, which inside a jitted, sharded train step means a
host callback per step (and `pure_callback` under SPMD gathers the costs to every host). This is
the shortest-augmenting-path form of the algorithm (Kuhn-Munkres with row / column potentials,
O(rows^2 x cols)) written with `lax` loops over fixed-size arrays, so it jits, vmaps over the
images of a batch and shards with them. It is cheap here: rows are ground-truth boxes (a few per
image), columns the image tokens.
"""

import jax
import jax.numpy as jnp


def _assign(cost: jax.Array) -> jax.Array:
    """cost [n, m] float, n <= m -> int32 [n]: the column of each row (module doc)."""
    n, m = cost.shape
    a = jnp.zeros((n + 1, m + 1), jnp.float32).at[1:, 1:].set(cost.astype(jnp.float32))
    columns = jnp.arange(m + 1)
    inf = jnp.float32(jnp.inf)

    def add_row(i: jax.Array, carry: tuple) -> tuple:
        u, v, p, way = carry
        p = p.at[0].set(i)  # column 0 is a dummy holding the row being inserted
        minv = jnp.full((m + 1,), inf)
        used = jnp.zeros((m + 1,), bool)

        def searching(state: tuple) -> jax.Array:
            _, _, p, _, _, _, j0 = state
            return p[j0] != 0

        def relax(state: tuple) -> tuple:
            u, v, p, way, minv, used, j0 = state
            used = used.at[j0].set(True)
            i0 = p[j0]
            reduced = a[i0] - u[i0] - v
            free = ~used & (columns > 0)
            better = free & (reduced < minv)
            minv = jnp.where(better, reduced, minv)
            way = jnp.where(better, j0, way)
            candidates = jnp.where(free, minv, inf)
            j1 = jnp.argmin(candidates)
            delta = candidates[j1]
            u = u.at[p].add(jnp.where(used, delta, 0.0))  # rows of used columns are distinct
            v = jnp.where(used, v - delta, v)
            minv = jnp.where(used, minv, minv - delta)
            return u, v, p, way, minv, used, j1

        u, v, p, way, _, _, j0 = jax.lax.while_loop(
            searching, relax, (u, v, p, way, minv, used, jnp.int32(0)))

        def augmenting(state: tuple) -> jax.Array:
            return state[1] != 0

        def flip(state: tuple) -> tuple:
            p, j0 = state
            j1 = way[j0]
            return p.at[j0].set(p[j1]), j1

        p, _ = jax.lax.while_loop(augmenting, flip, (p, j0))
        return u, v, p, way

    init = (jnp.zeros((n + 1,), jnp.float32), jnp.zeros((m + 1,), jnp.float32),
            jnp.zeros((m + 1,), jnp.int32), jnp.zeros((m + 1,), jnp.int32))
    _, _, p, _ = jax.lax.fori_loop(1, n + 1, add_row, init)
    # p[j] is the (1-based) row of column j, 0 where the column is free.
    column_of = jnp.zeros((n + 1,), jnp.int32).at[p].set(columns.astype(jnp.int32))
    return column_of[1:] - 1


def hungarian_match(cost: jax.Array) -> jax.Array:
    """cost [..., n, m] (n <= m, finite) -> int32 [..., n]: for each row the column it is
    assigned to, minimising the total cost with every column used at most once (SciPy's
    `linear_sum_assignment` on each matrix). Leading axes are batch axes.

    Padding rows (ground truth absent from an image) should carry one constant cost on every
    column: they then take whichever columns the real rows leave and change nothing."""
    n, m = cost.shape[-2:]
    if n > m:
        raise ValueError(f"hungarian_match assigns rows to distinct columns: {n} rows need at "
                         f"least as many columns, got {m}")
    fn = _assign
    for _ in range(cost.ndim - 2):
        fn = jax.vmap(fn)
    return fn(jax.lax.stop_gradient(cost))
