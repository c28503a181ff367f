"""Image normalisation: uint8 pixels -> (x / 255 - mean) / std, on device.

`data.image_mean` / `data.image_std` are one value or one per channel; the train step and every
evaluator normalise through this one function (the evaluation context hands it out).
"""

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp


def channel_stats(value: float | Sequence[float]) -> float | tuple[float, ...]:
    """A config's image_mean/std as a float or a tuple (lists from JSON are unhashable)."""
    return tuple(float(v) for v in value) if isinstance(value, (list, tuple)) else float(value)


def normalize_images(images: jax.Array, mean: float | Sequence[float],
                     std: float | Sequence[float]) -> jax.Array:
    """uint8 [b, H, W, c] -> float32 (x / 255 - mean) / std; mean and std broadcast over the
    last (channel) axis."""
    mean, std = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
    return (images.astype(jnp.float32) / 255.0 - mean) / std


@dataclasses.dataclass(frozen=True)
class Normalization:
    """A run's image statistics (hashable, so a jitted function can close over it)."""

    mean: float | tuple[float, ...]
    std: float | tuple[float, ...]

    @classmethod
    def from_config(cls, data: dict) -> "Normalization":
        return cls(channel_stats(data["image_mean"]), channel_stats(data["image_std"]))

    def __call__(self, images: jax.Array) -> jax.Array:
        return normalize_images(images, self.mean, self.std)
