"""What a model family is: how it composes towers into a model, and its registry entry.

A family (two-tower CLIP/SigLIP, CoCa, FILIP) builds its towers through the tower registry,
owns the heads and projections on top of them, and declares what it can do, so evaluators ask
for a capability instead of testing a model's name:
- "embedding": `encode_image(images)` / `encode_text(ids, mask)` give L2-normalised pooled
  embeddings scored by cosine (CLIP, SigLIP, CoCa);
- "token_wise": `encode_image_tokens` / `encode_text_tokens` give normalised per-token
  embeddings scored by late interaction (FILIP);
- "image_tokens": `encode_image_tokens(images)` gives per-patch embeddings in the joint space
  (dense zero-shot prediction);
- "captions": `image_features(images)` and `decode(caption_tokens, ids, mask)` (CoCa);
- "detection": `detect(images, queries)` gives per-token boxes, objectness and class scores
  against given class embeddings (the open-vocabulary detector);
- "segmentation": `segment(images, queries)` gives per-pixel class logits against given class
  embeddings and a learned background (the open-vocabulary segmenter).
Every family is called on a batch: `model(batch, train=..., rng=...)` with batch["image"]
normalised floats [b, H, W, c], batch["text"] / batch["text_mask"] [b, L] (`vlmjax.batch`),
and returns the outputs its objectives consume.
"""

import dataclasses
import math
from collections.abc import Callable, Mapping

import jax.numpy as jnp
from flax import nnx

CAPABILITIES = ("embedding", "token_wise", "image_tokens", "captions", "detection", "segmentation")


@dataclasses.dataclass(frozen=True)
class ModelFamily:
    """A registered model family (`config.model.name`)."""

    build: Callable[..., nnx.Module]  # (model cfg, vocab_size, context_length, rngs=) -> Module
    towers: Mapping[str, str]  # tower name -> parameter path regex (LiT locks one)
    capabilities: frozenset[str]
    # What `model(batch)` returns for objectives to train (`Objective.consumes`): "embeddings",
    # "tokens", "captions".
    outputs: frozenset[str] = frozenset({"embeddings"})
    scoring: str = "embedding"  # how evaluators score image-text pairs: a capability
    options: Mapping = dataclasses.field(default_factory=dict)  # its own model.* sections
    check: Callable[[Mapping], None] = lambda config: None  # raises ConfigError if unusable
    # The temperature parameters clamped after every update (exp(t) <= model.max_logit_scale).
    temperatures: tuple[str, ...] = ("logit_scale",)
    # The (log temperature, bias) parameters of the sigmoid a patch token meets a prompt with:
    # dense zero-shot's background="model" calls a patch background below its 1/2 for every
    # class (SigLIP's global pair; patch_phrase's local pair).
    patch_sigmoid: tuple[str, str] = ("logit_scale", "logit_bias")
    # The parameter of a learned null (background) embedding in the joint space, if the family
    # has one: background="model" then calls a patch background where it is closer to the null
    # than to every class (patch_phrase's null_phrase); it takes precedence over the sigmoid.
    patch_null: str = ""
    # (config dict, params) -> the config and parameters of the model that stands for this one
    # when exported (a distilled student as the two-tower model it is); None: itself.
    export_view: Callable[[dict, dict], tuple[dict, dict]] | None = None

    def post_update(self, params: dict, model_cfg: Mapping) -> dict:
        """Clamps each temperature t so that exp(t) <= max_logit_scale, after every update (as
        open_clip does)."""
        bound = math.log(model_cfg["max_logit_scale"])
        return {**params, **{k: jnp.minimum(params[k], bound) for k in self.temperatures
                             if k in params}}
