"""SigLIP's sigmoid loss without the [B, B] logits: tiles, streamed sums and argmax, custom VJP.

Forward: each tile of L = s x yᵀ + b adds softplus(-z L) (z = +1 on the global diagonal, -1 off
it, exactly the dense formula) to per-row sums and updates the row and column argmax. Backward:
each tile is recomputed; G = dsoftplus(-z L)/dL = -z σ(-z L) accumulates dx += s G y / B,
dy += s Gᵀ x / B and db += ΣG / B; dL/ds = Σ x·(G y) / B in O(BD). Under a `Ring` this is the
PROTOCOLS ring: each device keeps its images, texts go round, positives only in the home block.
"""

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from vlmjax.objectives.ring import NO_RING, Ring, check_divisible
from vlmjax.objectives.tiles import empty_argmax, merge_argmax, scan_tiles, tile_argmax


def _tile_logits(scale: jax.Array, bias: jax.Array, r_in: dict, c_in: dict
                 ) -> tuple[jax.Array, jax.Array]:
    """One tile's logits and its positive-pair mask (global row index == column index)."""
    logits = scale * jnp.einsum("id,jd->ij", r_in["x"], c_in["y"]) + bias
    return logits, r_in["index"][:, None] == c_in["index"][None, :]


def _update_argmax(stats: dict, logits: jax.Array, index: jax.Array, axis: int) -> dict:
    value, at = tile_argmax(logits, index, axis)
    top, argmax = merge_argmax(stats["max"], stats["argmax"], value, at)
    return {"max": top, "argmax": argmax}


def _forward_local(x: jax.Array, y: jax.Array, scale: jax.Array, bias: jax.Array, *, ring: Ring,
                   chunk_size: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """This shard's images against every text: the global (loss, i2t, t2i)."""
    b = x.shape[0]
    total = b * ring.size
    index = ring.index() * b + jnp.arange(b, dtype=jnp.int32)
    rows_in = {"x": x, "index": index}

    def tile(r_in: dict, c_in: dict, r_acc: dict, c_acc: dict) -> tuple[dict, dict]:
        logits, positive = _tile_logits(scale, bias, r_in, c_in)
        loss = r_acc["loss"] + jnp.sum(jax.nn.softplus(jnp.where(positive, -logits, logits)), axis=1)
        rows = _update_argmax(r_acc, logits, c_in["index"], axis=1)
        return {**rows, "loss": loss}, _update_argmax(c_acc, logits, r_in["index"], axis=0)

    def block(rows: dict, cols_in: dict, cols: dict) -> tuple[dict, dict]:
        return scan_tiles(tile, rows_in, cols_in, rows, cols, chunk_size)

    rows = {**empty_argmax(b), "loss": jnp.zeros((b,), jnp.float32)}
    rows, cols = ring.rotate(block, rows, {"y": y, "index": index}, empty_argmax(b))
    loss = ring.psum(jnp.sum(rows["loss"])) / total
    i2t = ring.psum(jnp.sum(rows["argmax"] == index)).astype(jnp.float32) / total
    t2i = ring.psum(jnp.sum(cols["argmax"] == index)).astype(jnp.float32) / total
    return loss, i2t, t2i


def _backward_local(x: jax.Array, y: jax.Array, scale: jax.Array, bias: jax.Array,
                    cotangent: jax.Array, *, ring: Ring, chunk_size: int
                    ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Gradients w.r.t. this shard's images and texts, and (summed) the scale and bias."""
    b = x.shape[0]
    total = b * ring.size
    index = ring.index() * b + jnp.arange(b, dtype=jnp.int32)
    rows_in = {"x": x, "index": index}

    def tile(r_in: dict, c_in: dict, r_acc: dict, gx: jax.Array) -> tuple[dict, jax.Array]:
        logits, positive = _tile_logits(scale, bias, r_in, c_in)
        g = jnp.where(positive, -jax.nn.sigmoid(-logits), jax.nn.sigmoid(logits))
        rows = {"gy": r_acc["gy"] + jnp.einsum("ij,jd->id", g, c_in["y"]),
                "gsum": r_acc["gsum"] + jnp.sum(g, axis=1)}
        return rows, gx + jnp.einsum("ij,id->jd", g, r_in["x"])

    def block(rows: dict, cols_in: dict, gx: jax.Array) -> tuple[dict, jax.Array]:
        return scan_tiles(tile, rows_in, cols_in, rows, gx, chunk_size)

    rows = {"gy": jnp.zeros_like(x), "gsum": jnp.zeros((b,), jnp.float32)}
    rows, gx = ring.rotate(block, rows, {"y": y, "index": index}, jnp.zeros_like(y))
    weight = cotangent / total
    dscale = ring.psum(weight * jnp.einsum("bd,bd->", x, rows["gy"]))
    dbias = ring.psum(weight * jnp.sum(rows["gsum"]))
    return weight * scale * rows["gy"], weight * scale * gx, dscale, dbias


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _sigmoid_loss(x: jax.Array, y: jax.Array, scale: jax.Array, bias: jax.Array, ring: Ring,
                  chunk_size: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    return _sigmoid_fwd(x, y, scale, bias, ring, chunk_size)[0]


def _sigmoid_fwd(x: jax.Array, y: jax.Array, scale: jax.Array, bias: jax.Array, ring: Ring,
                 chunk_size: int) -> tuple[tuple[jax.Array, ...], tuple[jax.Array, ...]]:
    batch, scalar = ring.batch_spec, PartitionSpec()
    forward = ring.shard(functools.partial(_forward_local, ring=ring, chunk_size=chunk_size),
                         in_specs=(batch, batch, scalar, scalar), out_specs=(scalar, scalar, scalar))
    return forward(x, y, scale, bias), (x, y, scale, bias)


def _sigmoid_bwd(ring: Ring, chunk_size: int, residuals: tuple[jax.Array, ...],
                 cotangents: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
    batch, scalar = ring.batch_spec, PartitionSpec()
    backward = ring.shard(functools.partial(_backward_local, ring=ring, chunk_size=chunk_size),
                          in_specs=(batch, batch, scalar, scalar, scalar),
                          out_specs=(batch, batch, scalar, scalar))
    return backward(*residuals, cotangents[0])  # accuracies carry no gradient


_sigmoid_loss.defvjp(_sigmoid_fwd, _sigmoid_bwd)


def blockwise_sigmoid_loss(image_embed: jax.Array, text_embed: jax.Array, scale: jax.Array,
                           bias: jax.Array, *, ring: Ring = NO_RING, chunk_size: int = 1024
                           ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """SigLIP loss and i2t/t2i accuracies in O(B·chunk) memory per device (exact, fp32)."""
    check_divisible(image_embed.shape[0], ring)
    loss, i2t, t2i = _sigmoid_loss(image_embed.astype(jnp.float32), text_embed.astype(jnp.float32),
                                   jnp.asarray(scale, jnp.float32), jnp.asarray(bias, jnp.float32),
                                   ring, chunk_size)
    return loss, {"i2t_accuracy": i2t, "t2i_accuracy": t2i}
