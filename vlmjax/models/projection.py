"""A model family's head from a tower's width into the joint space: `model.{image,text}.proj`.

"linear" (CLIP: a bias-free matrix, parameter `kernel`), "linear_bias" (big_vision's Dense head:
`kernel` plus `bias`) or "none" (the tower's features are the embedding; needs embed_dim ==
width, as big_vision SigLIP image towers without a head). The family owns it (parameters
`image_proj/...`, `text_proj/...`) and applies it to pooled features and to tokens alike.
"""

from collections.abc import Mapping

import jax
from flax import nnx

from vlmjax.errors import ConfigError
from vlmjax.models import layers

KINDS = ("linear", "linear_bias", "none")


def check_projection(side: str, kind: object, width: int, embed_dim: int) -> None:
    """ConfigError when `model.<side>.proj` is unknown or 'none' cannot reach embed_dim."""
    if kind not in KINDS:
        raise ConfigError(f"config.model.{side}.proj={kind!r} is not a projection; choose one of "
                          f"{', '.join(map(repr, KINDS))}")
    if kind == "none" and width != embed_dim:
        raise ConfigError(f"config.model.{side}.proj='none' needs model.embed_dim ({embed_dim}) "
                          f"== the {side} width ({width}); use 'linear' or set embed_dim to the width")


class Projection(nnx.Module):
    """x [..., width] -> [..., embed_dim] by the head `kind` (identity for "none")."""

    def __init__(self, kind: str, width: int, embed_dim: int, *, rngs: nnx.Rngs):
        if kind not in KINDS or (kind == "none" and width != embed_dim):
            raise ValueError(f"projection {kind!r} cannot map width {width} to {embed_dim}")
        self.kind = kind
        if kind != "none":
            self.kernel = layers.param(rngs, layers.normal(width ** -0.5), (width, embed_dim),
                                       ("embed", "joint"))
        if kind == "linear_bias":
            self.bias = layers.param(rngs, layers.zeros, (embed_dim,), ("joint",))

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.kind == "none":
            return x
        dt = x.dtype
        bias = self.bias[...].astype(dt) if self.kind == "linear_bias" else None
        return layers.dense(x, self.kernel[...].astype(dt), bias)  # ...d,de->...e


def side_projection(model: Mapping, side: str, width: int, rngs: nnx.Rngs) -> Projection:
    """The family's projection of tower `side` ("image" / "text") as `model.<side>.proj` says."""
    return Projection(model[side]["proj"], width, model["embed_dim"], rngs=rngs)
