"""FILIP's token selection: keep the tokens most similar to the other modality before the loss.

FILIP keeps, per example, the top fraction of its tokens ranked by each token's maximum
similarity to any valid token of the other modality among the examples of the same worker,
before gathering across devices. Here "the same worker" is a group of consecutive examples
(by default the batch shard one device holds), so a fixed group size gives the same loss on
any mesh. Padding is never selected over a valid token; scores carry no gradient.
"""

import math

import jax
import jax.numpy as jnp

from vlmjax.objectives.tiles import scan_tiles
from vlmjax.parallel.logical import constrain


def _group_token_scores(x: jax.Array, x_mask: jax.Array, y: jax.Array, y_mask: jax.Array,
                        chunk_size: int) -> tuple[jax.Array, jax.Array]:
    """Within one group: each image token's best similarity to a valid text token [g, n], and
    each text token's best similarity to a valid image token [g, m], in tiles."""

    def tile(r_in: dict, c_in: dict, r_acc: jax.Array, c_acc: jax.Array) -> tuple[jax.Array, jax.Array]:
        s = jnp.einsum("ikd,jrd->ikjr", r_in["x"], c_in["y"], preferred_element_type=jnp.float32)
        best_text = jnp.max(jnp.where(c_in["mask"][None, None], s, -jnp.inf), axis=(2, 3))
        best_image = jnp.max(jnp.where(r_in["mask"][:, :, None, None], s, -jnp.inf), axis=(0, 1))
        return jnp.maximum(r_acc, best_text), jnp.maximum(c_acc, best_image)

    empty = lambda a: jnp.full(a.shape[:2], -jnp.inf, jnp.float32)  # noqa: E731
    return scan_tiles(tile, {"x": x, "mask": x_mask}, {"y": y, "mask": y_mask}, empty(x), empty(y),
                      chunk_size)


def _keep_top(tokens: jax.Array, mask: jax.Array, scores: jax.Array, keep: int
              ) -> tuple[jax.Array, jax.Array]:
    """The `keep` best-scoring valid tokens of each row, in their original order, and their mask."""
    ranked = jnp.where(mask, scores, -jnp.inf)
    _, chosen = jax.lax.top_k(ranked, keep)
    chosen = jnp.sort(chosen, axis=-1)
    kept = jnp.take_along_axis(tokens, chosen[..., None], axis=1)
    return kept, jnp.take_along_axis(mask, chosen, axis=1)


def kept_tokens(num_tokens: int, fraction: float) -> int:
    """How many of `num_tokens` token slots a selection of `fraction` keeps (at least one)."""
    return max(1, math.ceil(fraction * num_tokens))


def select_tokens(x: jax.Array, x_mask: jax.Array, y: jax.Array, y_mask: jax.Array, *,
                  fraction: float, group: int, chunk_size: int = 64
                  ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Keeps ceil(fraction * slots) tokens per image [B, n, D] and text [B, m, D].

    Scores come from the `group` consecutive examples around each one (B must be a multiple).
    Returns the kept (image tokens, image mask, text tokens, text mask).
    """
    batch = x.shape[0]
    if batch % group:
        raise ValueError(f"token selection: batch {batch} is not a multiple of the group {group}")

    def grouped(a: jax.Array) -> jax.Array:
        a = a.reshape(batch // group, group, *a.shape[1:])
        return constrain(a, ("batch",) + (None,) * (a.ndim - 1))

    score_fn = jax.vmap(lambda *a: _group_token_scores(*a, chunk_size=chunk_size))
    x_scores, y_scores = score_fn(grouped(jax.lax.stop_gradient(x)), grouped(x_mask),
                                  grouped(jax.lax.stop_gradient(y)), grouped(y_mask))
    x_kept, x_mask = _keep_top(x, x_mask, x_scores.reshape(batch, -1),
                               kept_tokens(x.shape[1], fraction))
    y_kept, y_mask = _keep_top(y, y_mask, y_scores.reshape(batch, -1),
                               kept_tokens(y.shape[1], fraction))
    return x_kept, x_mask, y_kept, y_mask
