"""Evaluation contexts for evaluator tests whose planted models stand in for a run's model."""

from collections.abc import Mapping
from typing import Any

from vlmjax.data.normalization import Normalization
from vlmjax.evaluators.context import EvalContext, ModelView
from vlmjax.models.registry import FAMILIES


def make_eval_context(config: Mapping, *, graphdef: Any, tokenizer: Any, context_length: int,
                      mesh: Any, rules: Any, **extra: Any) -> EvalContext:
    """The context of a run described by the few keys evaluators need: data (dir, image_mean,
    image_std) and model (name, image: image_size, channels; default Fashion-MNIST's)."""
    model = config["model"]
    family = FAMILIES[model["name"]]
    image = model.get("image", {"image_size": 28, "channels": 1})  # Fashion-MNIST's
    return EvalContext(
        model=ModelView.of_family(graphdef, model["name"], family, model.get("embed_dim", 0)),
        tokenizer=tokenizer, context_length=context_length,
        image_size=image["image_size"], channels=image["channels"],
        normalize=Normalization.from_config(config["data"]), mesh=mesh, rules=rules,
        data_dir=config["data"]["dir"], **extra)
