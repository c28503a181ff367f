"""A tower's output head into the joint space: `model.{image,text}.proj`.

"linear" (CLIP: a bias-free matrix, parameter `proj`), "linear_bias" (big_vision's Dense head:
`proj` plus `proj_bias`) or "none" (the pooled features are the embedding; needs
embed_dim == width, as big_vision SigLIP image towers without a head).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from vlmjax.models import layers

KINDS = ("linear", "linear_bias", "none")


def add_projection(tower: nnx.Module, kind: str, width: int, embed_dim: int,
                   rngs: nnx.Rngs) -> None:
    """Creates `tower.proj` (and `tower.proj_bias`) for head `kind`; nothing for "none"."""
    if kind not in KINDS:
        raise ValueError(f"proj must be one of {KINDS}, got {kind!r}")
    if kind == "none" and width != embed_dim:
        raise ValueError(f"proj='none' needs embed_dim ({embed_dim}) == width ({width})")
    if kind != "none":
        tower.proj = layers.param(rngs, layers.normal(width ** -0.5), (width, embed_dim),
                                  ("embed", "joint"))
    if kind == "linear_bias":
        tower.proj_bias = layers.param(rngs, layers.zeros, (embed_dim,), ("joint",))


def project(tower: nnx.Module, kind: str, pooled: jax.Array) -> jax.Array:
    """pooled [b, d] -> [b, e] through the head `add_projection` made."""
    if kind == "none":
        return pooled
    dt = pooled.dtype
    out = jnp.einsum("bd,de->be", pooled, tower.proj[...].astype(dt))
    if kind == "linear_bias":
        out = out + tower.proj_bias[...].astype(dt)
    return out
