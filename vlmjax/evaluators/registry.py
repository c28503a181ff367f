"""String-keyed evaluator registry: `config.evals.<name>.kind` -> evaluator class + defaults.

An evaluator is built once (data loaded, functions jitted) and then `run(params) -> metrics`
any number of times, during training or from a checkpoint.
"""

from collections.abc import Mapping
from typing import Any

from vlmjax.errors import ConfigError
from vlmjax.evaluators import (
    caption_zeroshot,
    captioning,
    fewshot,
    finetune,
    linear_probe,
    retrieval,
    unsupervised,
    zeroshot,
)

EVALUATORS: dict[str, tuple[type, Mapping]] = {
    "zeroshot": (zeroshot.ZeroShotClassification, zeroshot.DEFAULTS),
    "caption_zeroshot": (caption_zeroshot.CaptionZeroShotClassification, caption_zeroshot.DEFAULTS),
    "captioning": (captioning.Captioning, captioning.DEFAULTS),
    "retrieval": (retrieval.Retrieval, retrieval.DEFAULTS),
    "linear_probe": (linear_probe.LinearProbe, linear_probe.DEFAULTS),
    "fewshot": (fewshot.FewShot, fewshot.DEFAULTS),
    "unsupervised": (unsupervised.Unsupervised, unsupervised.DEFAULTS),
    "finetune": (finetune.FineTune, finetune.DEFAULTS),
}


def evaluator_schema(name: str, kind: str) -> dict:
    """Allowed keys of `config.evals.<name>` (with defaults) for evaluator `kind`."""
    if kind not in EVALUATORS:
        raise ConfigError(f"config.evals.{name}.kind={kind!r} is not a registered evaluator; "
                          f"choose one of {', '.join(EVALUATORS)}")
    return dict(EVALUATORS[kind][1])


def build_evaluators(evals: Mapping, ctx: Any) -> list:
    """One evaluator per config entry; missing keys take the evaluator's defaults."""
    out = []
    for cfg in evals.values():
        cls, defaults = EVALUATORS[cfg["kind"]]
        out.append(cls({**defaults, **cfg}, ctx))
    return out
