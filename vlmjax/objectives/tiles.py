"""Tiled loops over a [b, D] x [b', D] block of pairwise logits, and streamed argmax.

The chunked and ring contrastive losses stream per-row and per-column statistics (or gradient
accumulators) through `scan_tiles`, so at most one [chunk, chunk] tile of logits exists at a time
and the compiled program has one tile body whatever the batch size.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

# (row inputs, column inputs, row accumulators, column accumulators) of one tile
# -> (row accumulators, column accumulators); every leaf has the tile's rows (columns) first.
TileFn = Callable[[Any, Any, Any, Any], tuple[Any, Any]]

NO_INDEX = jnp.iinfo(jnp.int32).max  # argmax of a row that has seen no column yet


def chunk_length(n: int, chunk_size: int) -> int:
    """Largest divisor of `n` not above `chunk_size`: tiles must cover `n` exactly.

    Any tiling gives the same result (only the summation order of fp32 sums changes), so a
    chunk_size that does not divide the batch just means somewhat smaller tiles.
    """
    return max(d for d in range(1, min(n, chunk_size) + 1) if n % d == 0)


def _split(tree: Any, chunk: int) -> Any:
    return jax.tree.map(lambda a: a.reshape(a.shape[0] // chunk, chunk, *a.shape[1:]), tree)


def _merge(tree: Any) -> Any:
    return jax.tree.map(lambda a: a.reshape(a.shape[0] * a.shape[1], *a.shape[2:]), tree)


def scan_tiles(tile_fn: TileFn, row_in: Any, col_in: Any, row_acc: Any, col_acc: Any,
               chunk_size: int) -> tuple[Any, Any]:
    """Applies `tile_fn` to every (row chunk, column chunk) tile, rows outer, columns inner.

    Row accumulators are carried along the inner loop, column accumulators along the outer one,
    so each tile updates both in one visit. Returns the final (row_acc, col_acc).
    """
    rows = jax.tree.leaves(row_in)[0].shape[0]
    cols = jax.tree.leaves(col_in)[0].shape[0]
    row_chunk, col_chunk = chunk_length(rows, chunk_size), chunk_length(cols, chunk_size)
    col_in_chunks = _split(col_in, col_chunk)

    def over_rows(col_acc_chunks: Any, row: tuple[Any, Any]) -> tuple[Any, Any]:
        row_in_chunk, row_acc_chunk = row

        def over_cols(row_acc_chunk: Any, col: tuple[Any, Any]) -> tuple[Any, Any]:
            return tile_fn(row_in_chunk, col[0], row_acc_chunk, col[1])

        row_acc_chunk, col_acc_chunks = jax.lax.scan(
            over_cols, row_acc_chunk, (col_in_chunks, col_acc_chunks))
        return col_acc_chunks, row_acc_chunk

    col_acc_chunks, row_acc_chunks = jax.lax.scan(
        over_rows, _split(col_acc, col_chunk), (_split(row_in, row_chunk), _split(row_acc, row_chunk)))
    return _merge(row_acc_chunks), _merge(col_acc_chunks)


def tile_argmax(logits: jax.Array, index: jax.Array, axis: int) -> tuple[jax.Array, jax.Array]:
    """Max of a tile along `axis` and the global index (read from `index`) where it first occurs."""
    arg = jnp.argmax(logits, axis=axis)
    value = jnp.take_along_axis(logits, jnp.expand_dims(arg, axis), axis=axis).squeeze(axis)
    return value, index[arg]


def merge_argmax(best: jax.Array, best_index: jax.Array, value: jax.Array, value_index: jax.Array
                 ) -> tuple[jax.Array, jax.Array]:
    """Running (max, argmax); ties go to the lower global index, as `jnp.argmax` on a full row."""
    take = (value > best) | ((value == best) & (value_index < best_index))
    return jnp.maximum(best, value), jnp.where(take, value_index, best_index)


def empty_argmax(n: int) -> dict[str, jax.Array]:
    """Running max / argmax of `n` rows (or columns) before any tile."""
    return {"max": jnp.full((n,), -jnp.inf, jnp.float32), "argmax": jnp.full((n,), NO_INDEX, jnp.int32)}
