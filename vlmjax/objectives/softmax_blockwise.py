"""CLIP's softmax contrastive loss without the [B, B] logits: tiles, streamed log-sum-exp, custom VJP.

Forward: one pass over the tiles of L = s x yᵀ updates the row and the column (max, sum of exp,
argmax) together, so the B²D matmul is done once. Backward: each tile is recomputed and
G = exp(L - lse_row) + exp(L - lse_col) accumulates dx += s G y / 2B and dy += s Gᵀ x / 2B;
the positives' -1/B and dL/ds come from O(BD) terms. The same per-device code is the chunked
loss (one device) and, under a `Ring`, the ring loss over the batch shards.
"""

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from vlmjax.objectives.ring import NO_RING, Ring, check_divisible
from vlmjax.objectives.tiles import empty_argmax, merge_argmax, scan_tiles, tile_argmax


def _empty_stats(n: int) -> dict[str, jax.Array]:
    return {**empty_argmax(n), "sumexp": jnp.zeros((n,), jnp.float32)}


def _update_stats(stats: dict, logits: jax.Array, index: jax.Array, axis: int) -> dict:
    """Streams one tile into running (max, sum of exp(l - max), argmax) along `axis`."""
    value, at = tile_argmax(logits, index, axis)
    top, argmax = merge_argmax(stats["max"], stats["argmax"], value, at)
    sumexp = (stats["sumexp"] * jnp.exp(stats["max"] - top)
              + jnp.sum(jnp.exp(logits - jnp.expand_dims(top, axis)), axis=axis))
    return {"max": top, "argmax": argmax, "sumexp": sumexp}


def _forward_local(x: jax.Array, y: jax.Array, scale: jax.Array, *, ring: Ring, chunk_size: int
                   ) -> tuple[tuple[jax.Array, ...], tuple[jax.Array, jax.Array]]:
    """This shard's images against every text: (loss, i2t, t2i) and the rows'/columns' lse."""
    b = x.shape[0]
    total = b * ring.size
    index = ring.index() * b + jnp.arange(b, dtype=jnp.int32)
    rows_in = {"x": x, "index": index}

    def tile(r_in: dict, c_in: dict, r_acc: dict, c_acc: dict) -> tuple[dict, dict]:
        logits = scale * jnp.einsum("id,jd->ij", r_in["x"], c_in["y"])
        return (_update_stats(r_acc, logits, c_in["index"], axis=1),
                _update_stats(c_acc, logits, r_in["index"], axis=0))

    def block(rows: dict, cols_in: dict, cols: dict) -> tuple[dict, dict]:
        return scan_tiles(tile, rows_in, cols_in, rows, cols, chunk_size)

    rows, cols = ring.rotate(block, _empty_stats(b), {"y": y, "index": index}, _empty_stats(b))
    lse_rows = rows["max"] + jnp.log(rows["sumexp"])
    lse_cols = cols["max"] + jnp.log(cols["sumexp"])
    positives = scale * jnp.einsum("bd,bd->b", x, y)  # the diagonal, in O(bD)
    loss = ring.psum(jnp.sum(lse_rows - positives) + jnp.sum(lse_cols - positives)) / (2 * total)
    i2t = ring.psum(jnp.sum(rows["argmax"] == index)).astype(jnp.float32) / total
    t2i = ring.psum(jnp.sum(cols["argmax"] == index)).astype(jnp.float32) / total
    return (loss, i2t, t2i), (lse_rows, lse_cols)


def _backward_local(x: jax.Array, y: jax.Array, scale: jax.Array, lse_rows: jax.Array,
                    lse_cols: jax.Array, cotangent: jax.Array, *, ring: Ring, chunk_size: int
                    ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Gradients of the loss w.r.t. this shard's images and texts, and (summed) the scale."""
    total = x.shape[0] * ring.size
    rows_in = {"x": x, "lse": lse_rows}

    def tile(r_in: dict, c_in: dict, gy: jax.Array, gx: jax.Array) -> tuple[jax.Array, jax.Array]:
        logits = scale * jnp.einsum("id,jd->ij", r_in["x"], c_in["y"])
        g = jnp.exp(logits - r_in["lse"][:, None]) + jnp.exp(logits - c_in["lse"][None, :])
        return gy + jnp.einsum("ij,jd->id", g, c_in["y"]), gx + jnp.einsum("ij,id->jd", g, r_in["x"])

    def block(gy: jax.Array, cols_in: dict, gx: jax.Array) -> tuple[jax.Array, jax.Array]:
        return scan_tiles(tile, rows_in, cols_in, gy, gx, chunk_size)

    gy, gx = ring.rotate(block, jnp.zeros_like(x), {"y": y, "lse": lse_cols}, jnp.zeros_like(y))
    # dloss/dL = G / 2B - I / B (the positives sit on the diagonal).
    soft, positive = cotangent / (2 * total), cotangent / total
    dx = scale * (soft * gy - positive * y)
    dy = scale * (soft * gx - positive * x)
    dscale = ring.psum(soft * jnp.einsum("bd,bd->", x, gy) - positive * jnp.einsum("bd,bd->", x, y))
    return dx, dy, dscale


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _softmax_loss(x: jax.Array, y: jax.Array, scale: jax.Array, ring: Ring, chunk_size: int
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
    return _softmax_fwd(x, y, scale, ring, chunk_size)[0]


def _softmax_fwd(x: jax.Array, y: jax.Array, scale: jax.Array, ring: Ring, chunk_size: int
                 ) -> tuple[tuple[jax.Array, ...], tuple[jax.Array, ...]]:
    batch, scalar = ring.batch_spec, PartitionSpec()
    forward = ring.shard(functools.partial(_forward_local, ring=ring, chunk_size=chunk_size),
                         in_specs=(batch, batch, scalar),
                         out_specs=((scalar, scalar, scalar), (batch, batch)))
    outputs, (lse_rows, lse_cols) = forward(x, y, scale)
    return outputs, (x, y, scale, lse_rows, lse_cols)


def _softmax_bwd(ring: Ring, chunk_size: int, residuals: tuple[jax.Array, ...],
                 cotangents: tuple[jax.Array, ...]) -> tuple[jax.Array, jax.Array, jax.Array]:
    batch, scalar = ring.batch_spec, PartitionSpec()
    backward = ring.shard(functools.partial(_backward_local, ring=ring, chunk_size=chunk_size),
                          in_specs=(batch, batch, scalar, batch, batch, scalar),
                          out_specs=(batch, batch, scalar))
    return backward(*residuals, cotangents[0])  # accuracies carry no gradient


_softmax_loss.defvjp(_softmax_fwd, _softmax_bwd)


def blockwise_softmax_loss(image_embed: jax.Array, text_embed: jax.Array, scale: jax.Array, *,
                           ring: Ring = NO_RING, chunk_size: int = 1024
                           ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """CLIP loss and i2t/t2i accuracies in O(B·chunk) memory per device (exact, fp32)."""
    check_divisible(image_embed.shape[0], ring)
    loss, i2t, t2i = _softmax_loss(image_embed.astype(jnp.float32), text_embed.astype(jnp.float32),
                                   jnp.asarray(scale, jnp.float32), ring, chunk_size)
    return loss, {"i2t_accuracy": i2t, "t2i_accuracy": t2i}
