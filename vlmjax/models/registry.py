"""String-keyed model registry: `config.model.name` -> how to build and constrain the model."""

import dataclasses
from collections.abc import Callable, Mapping

from flax import nnx

from vlmjax.errors import ConfigError
from vlmjax.models.coca import COCA_TOWER_PATTERNS, CoCa
from vlmjax.models.filip import Filip
from vlmjax.models.two_tower import TOWER_PATTERNS, TwoTower, clamp_logit_scale


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """How the train loop builds a model family and keeps its parameters in range."""

    build: Callable[..., nnx.Module]  # (model_config, vocab_size, context_length, rngs=) -> Module
    post_update: Callable[[dict, Mapping], dict]  # (params, model_config) -> params
    towers: Mapping[str, str]  # tower name -> parameter path regex
    # How evaluators score image-text pairs: "embedding" (cosine of pooled embeddings, through
    # encode_image / encode_text) or "token_wise" (FILIP's late interaction, through
    # encode_image_tokens / encode_text_tokens).
    scoring: str = "embedding"


MODELS: dict[str, ModelSpec] = {
    "two_tower": ModelSpec(
        build=TwoTower,
        post_update=lambda params, cfg: clamp_logit_scale(params, cfg["max_logit_scale"]),
        towers=TOWER_PATTERNS,
    ),
    "coca": ModelSpec(
        build=CoCa,
        post_update=lambda params, cfg: clamp_logit_scale(params, cfg["max_logit_scale"]),
        towers=COCA_TOWER_PATTERNS,
    ),
    "filip": ModelSpec(
        build=Filip,
        post_update=lambda params, cfg: clamp_logit_scale(params, cfg["max_logit_scale"]),
        towers=TOWER_PATTERNS,
        scoring="token_wise",
    ),
}


def get_model_spec(name: str) -> ModelSpec:
    """The registry entry for `name`, or a ConfigError listing the known models."""
    if name not in MODELS:
        raise ConfigError(f"config.model.name={name!r} is not a registered model; choose one of "
                          f"{', '.join(MODELS)}")
    return MODELS[name]
