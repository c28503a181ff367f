"""FILIP's token-wise late-interaction similarities, dense or in tiles with a custom VJP.

For images x [B, n, D] and texts y [B, m, D] (L2-normalised tokens) with validity masks:
- s_I[i, j] = mean over image i's valid tokens k of max over text j's valid tokens r of <x_ik, y_jr>
- s_T[i, j] = mean over text j's valid tokens r of max over image i's valid tokens k of <x_ik, y_jr>
Two different functions of the same [B, n, B, m] token-similarity tensor (s_T is not s_Iᵀ).

The blockwise form never holds more than one [chunk, n, chunk, m] tile: the forward pass
writes the [B, B] matrices tile by tile; the backward pass recomputes each tile and routes
the cotangent of every (i, j) entry to the argmax tokens only (the gradient of a max). Under a
`Ring` each device keeps its images and the texts circulate, each carrying its column of s_T
home, so a device holds its rows of s_I and its texts' rows of s_Tᵀ and nothing global.
"""

import functools

import jax
import jax.numpy as jnp

from vlmjax.objectives.ring import NO_RING, Ring, check_divisible
from vlmjax.objectives.tiles import scan_tiles


def _token_counts(mask: jax.Array) -> jax.Array:
    # A row without valid tokens would divide by zero; its similarity is then -inf (never chosen).
    return jnp.maximum(jnp.sum(mask, axis=-1), 1).astype(jnp.float32)


def _masked_token_sims(x: jax.Array, x_mask: jax.Array, y: jax.Array, y_mask: jax.Array
                       ) -> tuple[jax.Array, jax.Array]:
    """Token similarities [i, k, j, r] with invalid text tokens (for max over r) and invalid
    image tokens (for max over k) set to -inf: (over_text, over_image)."""
    s = jnp.einsum("ikd,jrd->ikjr", x, y, preferred_element_type=jnp.float32)
    over_text = jnp.where(y_mask[None, None], s, -jnp.inf)
    over_image = jnp.where(x_mask[:, :, None, None], s, -jnp.inf)
    return over_text, over_image


def _tile_similarities(x: jax.Array, x_mask: jax.Array, y: jax.Array, y_mask: jax.Array
                       ) -> tuple[jax.Array, jax.Array]:
    """(s_I, s_T), each [i, j], of a block of images against a block of texts."""
    over_text, over_image = _masked_token_sims(x, x_mask, y, y_mask)
    best_text = jnp.max(over_text, axis=3)  # [i, k, j]: each image token's best text token
    best_image = jnp.max(over_image, axis=1)  # [i, j, r]: each text token's best image token
    # `where`, not a product: a masked token's -inf must not turn the sum into nan.
    s_image = jnp.sum(jnp.where(x_mask[:, :, None], best_text, 0.0), axis=1)
    s_text = jnp.sum(jnp.where(y_mask[None], best_image, 0.0), axis=2)
    return s_image / _token_counts(x_mask)[:, None], s_text / _token_counts(y_mask)[None, :]


def dense_token_similarities(x: jax.Array, x_mask: jax.Array, y: jax.Array, y_mask: jax.Array
                             ) -> tuple[jax.Array, jax.Array]:
    """(s_I, s_T) [B, B] from the full [B, n, B, m] tensor; plain autodiff (the reference)."""
    return _tile_similarities(x, x_mask, y, y_mask)


def _tile_gradients(x: jax.Array, x_mask: jax.Array, y: jax.Array, y_mask: jax.Array,
                    g_image: jax.Array, g_text: jax.Array) -> tuple[jax.Array, jax.Array]:
    """d<g_image, s_I> + d<g_text, s_T> w.r.t. the tile's image and text tokens."""
    over_text, over_image = _masked_token_sims(x, x_mask, y, y_mask)
    n, m = x.shape[1], y.shape[1]
    # Weight of each (i, k, j) max in s_I and each (i, j, r) max in s_T.
    w_image = jnp.where(x_mask, 1.0 / _token_counts(x_mask)[:, None], 0.0)[:, :, None] * g_image[:, None]
    w_text = jnp.where(y_mask, 1.0 / _token_counts(y_mask)[:, None], 0.0)[None] * g_text[:, :, None]
    hit_text = jax.nn.one_hot(jnp.argmax(over_text, axis=3), m, dtype=jnp.float32)  # [i, k, j, r]
    hit_image = jax.nn.one_hot(jnp.argmax(over_image, axis=1), n, axis=1, dtype=jnp.float32)
    weights = hit_text * w_image[..., None] + hit_image * w_text[:, None]
    dx = jnp.einsum("ikjr,jrd->ikd", weights, y.astype(jnp.float32))
    dy = jnp.einsum("ikjr,ikd->jrd", weights, x.astype(jnp.float32))
    return dx, dy


def _forward_local(x: jax.Array, x_mask: jax.Array, y: jax.Array, y_mask: jax.Array, *,
                   ring: Ring, chunk_size: int) -> tuple[jax.Array, jax.Array]:
    """This shard's rows of s_I [b, B] and its texts' rows of s_Tᵀ [b, B]."""
    b = x.shape[0]
    total = b * ring.size
    index = ring.index() * b + jnp.arange(b, dtype=jnp.int32)
    rows_in = {"x": x, "mask": x_mask, "index": index}

    def tile(r_in: dict, c_in: dict, s_image: jax.Array, s_text_t: jax.Array
             ) -> tuple[jax.Array, jax.Array]:
        block_image, block_text = _tile_similarities(r_in["x"], r_in["mask"], c_in["y"], c_in["mask"])
        s_image = jax.lax.dynamic_update_slice(s_image, block_image, (0, c_in["index"][0]))
        s_text_t = jax.lax.dynamic_update_slice(s_text_t, block_text.T, (0, r_in["index"][0]))
        return s_image, s_text_t

    def block(s_image: jax.Array, cols_in: dict, s_text_t: jax.Array) -> tuple[jax.Array, jax.Array]:
        return scan_tiles(tile, rows_in, cols_in, s_image, s_text_t, chunk_size)

    empty = jnp.zeros((b, total), jnp.float32)
    return ring.rotate(block, empty, {"y": y, "mask": y_mask, "index": index}, empty)


def _backward_local(x: jax.Array, x_mask: jax.Array, y: jax.Array, y_mask: jax.Array,
                    g_image: jax.Array, g_text_t: jax.Array, *, ring: Ring, chunk_size: int
                    ) -> tuple[jax.Array, jax.Array]:
    """Gradients w.r.t. this shard's image and text tokens."""
    b = x.shape[0]
    index = ring.index() * b + jnp.arange(b, dtype=jnp.int32)
    rows_in = {"x": x, "mask": x_mask, "index": index, "g": g_image}

    def tile(r_in: dict, c_in: dict, dx: jax.Array, dy: jax.Array) -> tuple[jax.Array, jax.Array]:
        ci, cj = r_in["x"].shape[0], c_in["y"].shape[0]
        g_image = jax.lax.dynamic_slice(r_in["g"], (0, c_in["index"][0]), (ci, cj))
        g_text = jax.lax.dynamic_slice(c_in["g"], (0, r_in["index"][0]), (cj, ci)).T
        tile_dx, tile_dy = _tile_gradients(r_in["x"], r_in["mask"], c_in["y"], c_in["mask"],
                                           g_image, g_text)
        return dx + tile_dx, dy + tile_dy

    def block(dx: jax.Array, cols_in: dict, dy: jax.Array) -> tuple[jax.Array, jax.Array]:
        return scan_tiles(tile, rows_in, cols_in, dx, dy, chunk_size)

    visitors = {"y": y, "mask": y_mask, "index": index, "g": g_text_t}
    return ring.rotate(block, jnp.zeros(x.shape, jnp.float32), visitors,
                       jnp.zeros(y.shape, jnp.float32))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _blockwise(x: jax.Array, x_mask: jax.Array, y: jax.Array, y_mask: jax.Array, ring: Ring,
               chunk_size: int) -> tuple[jax.Array, jax.Array]:
    return _blockwise_fwd(x, x_mask, y, y_mask, ring, chunk_size)[0]


def _blockwise_fwd(x: jax.Array, x_mask: jax.Array, y: jax.Array, y_mask: jax.Array, ring: Ring,
                   chunk_size: int) -> tuple[tuple[jax.Array, jax.Array], tuple]:
    batch = ring.batch_spec
    forward = ring.shard(functools.partial(_forward_local, ring=ring, chunk_size=chunk_size),
                         in_specs=(batch,) * 4, out_specs=(batch, batch))
    return forward(x, x_mask, y, y_mask), (x, x_mask, y, y_mask)


def _blockwise_bwd(ring: Ring, chunk_size: int, residuals: tuple, cotangents: tuple) -> tuple:
    x, x_mask, y, y_mask = residuals
    g_image, g_text_t = cotangents
    batch = ring.batch_spec
    backward = ring.shard(functools.partial(_backward_local, ring=ring, chunk_size=chunk_size),
                          in_specs=(batch,) * 6, out_specs=(batch, batch))
    dx, dy = backward(x, x_mask, y, y_mask, g_image, g_text_t)
    return dx.astype(x.dtype), None, dy.astype(y.dtype), None


_blockwise.defvjp(_blockwise_fwd, _blockwise_bwd)


def blockwise_token_similarities(x: jax.Array, x_mask: jax.Array, y: jax.Array, y_mask: jax.Array,
                                 *, ring: Ring = NO_RING, chunk_size: int = 64
                                 ) -> tuple[jax.Array, jax.Array]:
    """(s_I, s_T) [B, B] equal to `dense_token_similarities`, in O(chunk² n m) memory per tile.

    `chunk_size` counts examples per tile side: a tile holds chunk² · n · m floats.
    """
    check_divisible(x.shape[0], ring)
    s_image, s_text_t = _blockwise(x, x_mask.astype(bool), y, y_mask.astype(bool), ring, chunk_size)
    return s_image, s_text_t.T
