"""The evaluation context of a run: what the train loop and `vlmjax.evaluate` hand evaluators."""

from collections.abc import Mapping
from typing import Any

from jax.sharding import Mesh

from vlmjax.data.normalization import Normalization
from vlmjax.evaluators.context import EvalContext, ModelView
from vlmjax.models.registry import get_family
from vlmjax.tokenizers import Tokenizer
from vlmjax.train.supervised import classifier_trainer


def eval_context(cfg: Mapping, graphdef: Any, tokenizer: Tokenizer, mesh: Mesh, *,
                 checkpoint: str = "", cache_dir: str = "") -> EvalContext:
    """The context of the run `cfg` describes (its model graph, tokenizer, mesh)."""
    family = get_family(cfg["model"])
    normalization = Normalization.from_config(cfg["data"])
    rules = cfg["sharding_rules"]
    return EvalContext(
        model=ModelView.of_family(graphdef, cfg["model"]["name"], family,
                                  cfg["model"]["embed_dim"]),
        tokenizer=tokenizer, context_length=cfg["tokenizer"]["context_length"],
        image_size=cfg["model"]["image"]["image_size"], channels=cfg["model"]["image"]["channels"],
        normalize=normalization, mesh=mesh, rules=rules, data_dir=cfg["data"]["dir"],
        train_classifier=classifier_trainer(mesh, rules, normalization,
                                            cfg["optimizer"]["no_decay"], cfg["seed"]),
        checkpoint=checkpoint, cache_dir=cache_dir)
