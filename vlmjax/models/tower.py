"""What a tower is: a module from images or token ids to features, and its registry entry.

A tower returns its features before any projection, as a dict:
- "pooled" [b, d]: one vector per example (the class token, a pooled head, end-of-text token);
- "tokens" [b, n, d]: per-position features in the same space as "pooled" (patches, spatial
  cells, text positions), for token-wise scoring (FILIP) and dense prediction;
- "mask" [b, n]: which tokens are real (text padding is not).
A family that pools the tokens itself (CoCa) builds the tower with `head=False`: then only
"tokens" (the trunk's output, before any final norm) and "mask" are returned.
Text towers also offer `embed_tokens(ids)` and take `token_embeds` in place of the lookup
(prompt learning, CoOp), and every tower has `width`, the size of its features.
"""

import dataclasses
from collections.abc import Callable, Mapping

import jax.numpy as jnp
from flax import nnx

# Keys every image / text tower section has besides its own options (`model.image.*`,
# `model.text.*`); `proj` is read by the family, which owns the projection.
IMAGE_COMMON = {"kind": "vit", "image_size": 224, "channels": 3, "proj": "linear"}
TEXT_COMMON = {"kind": "transformer", "proj": "linear"}


@dataclasses.dataclass(frozen=True)
class TowerSettings:
    """What a tower takes from the model section besides its own options."""

    activation: str = "gelu"
    norm_eps: float = 1e-5
    remat: str = "none"
    scan_layers: bool = False
    dtype: str = "float32"
    vocab_size: int = 0  # text towers: from the tokenizer
    context_length: int = 0
    head: bool = True  # False: a trunk for a family that pools the tokens itself

    @classmethod
    def from_model(cls, model: Mapping, vocab_size: int = 0, context_length: int = 0,
                   head: bool = True) -> "TowerSettings":
        return cls(activation=model["activation"], norm_eps=model["norm_eps"],
                   remat=model["remat"], scan_layers=model["scan_layers"], dtype=model["dtype"],
                   vocab_size=vocab_size, context_length=context_length, head=head)

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)


@dataclasses.dataclass(frozen=True)
class TowerSpec:
    """A registered tower kind: how to build it, its own options with defaults, its checks."""

    build: Callable[..., nnx.Module]  # (section cfg, TowerSettings, rngs=) -> module
    options: Mapping  # its keys in model.image / model.text beyond the common ones, defaults
    check: Callable[[Mapping, str], None]  # (full config, "model.image") -> ConfigError if unusable
    width: Callable[[Mapping], int]  # the feature width its section describes
