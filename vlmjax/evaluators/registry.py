"""The evaluator registry: `config.evals.<name>.kind` -> an evaluator, its options and check.

An evaluator is built once (data loaded, functions jitted) and then `run(params) -> metrics`
any number of times, during training (every `evals.<name>.every` steps) or from a checkpoint.
Adding one is one module (the evaluator class, its `Options` dataclass, `check`) and one line
here. The config layer sees plain dicts (`evaluator_schema`, `check_evals`); evaluators and
their checks get the typed `Options` (`evaluators.typed_options`).
"""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from vlmjax.errors import ConfigError
from vlmjax.evaluators import (
    caption_zeroshot,
    captioning,
    dense_segmentation,
    fewshot,
    finetune,
    linear_probe,
    ov_detection,
    ov_segmentation,
    region_classification,
    retrieval,
    unsupervised,
    zeroshot,
)
from vlmjax.evaluators.context import EvalContext, EvalFacts
from vlmjax.evaluators.typed_options import options_from, schema
from vlmjax.options import fail
from vlmjax.registry import Registry

__all__ = ["EVALUATORS", "EvalFacts", "build_evaluators", "check_evals", "evaluator_schema"]

# Keys every evaluator has: its kind, and how often it runs during training (steps; 0: only at
# the end; -1: every train.eval_every steps, the global schedule).
EVAL_COMMON = {"kind": "", "every": -1}


@dataclasses.dataclass(frozen=True)
class EvaluatorSpec:
    """A registered evaluator kind."""

    build: Callable[[Mapping, EvalContext], Any]  # (its config section, context) -> evaluator
    options: Mapping  # its keys with defaults (beyond kind and every)
    check: Callable[[str, Mapping, EvalFacts], None]  # (name, config section, facts) -> raises


def evaluator(cls: type, options_type: type, check: Callable[[str, Any, EvalFacts], None]
              ) -> EvaluatorSpec:
    """The entry of an evaluator class taking (`options_type`, context) and its check taking
    (name, `options_type`, facts); the entry takes and checks config sections."""
    return EvaluatorSpec(
        build=lambda section, ctx: cls(options_from(options_type, section), ctx),
        options=schema(options_type),
        check=lambda name, section, facts: check(name, options_from(options_type, section), facts))


EVALUATORS: Registry[EvaluatorSpec] = Registry("evals.<name>.kind", {
    "zeroshot": evaluator(zeroshot.ZeroShotClassification, zeroshot.Options, zeroshot.check),
    "caption_zeroshot": evaluator(caption_zeroshot.CaptionZeroShotClassification,
                                  caption_zeroshot.Options, caption_zeroshot.check),
    "captioning": evaluator(captioning.Captioning, captioning.Options, captioning.check),
    "retrieval": evaluator(retrieval.Retrieval, retrieval.Options, retrieval.check),
    "linear_probe": evaluator(linear_probe.LinearProbe, linear_probe.Options, linear_probe.check),
    "fewshot": evaluator(fewshot.FewShot, fewshot.Options, fewshot.check),
    "unsupervised": evaluator(unsupervised.Unsupervised, unsupervised.Options, unsupervised.check),
    "finetune": evaluator(finetune.FineTune, finetune.Options, finetune.check),
    "dense_segmentation": evaluator(dense_segmentation.DenseSegmentation,
                                    dense_segmentation.Options, dense_segmentation.check),
    "region_classification": evaluator(region_classification.RegionClassification,
                                       region_classification.Options, region_classification.check),
    # Box AP of an open-vocabulary detector (models.ov_detector) on novel / base / all classes.
    "ov_detection": evaluator(ov_detection.OVDetection, ov_detection.Options, ov_detection.check),
    # Novel / base / all mIoU of an open-vocabulary segmenter (models.ov_segmenter).
    "ov_segmentation": evaluator(ov_segmentation.OVSegmentation, ov_segmentation.Options,
                                 ov_segmentation.check),
})


def evaluator_schema(name: str, section: Mapping) -> dict:
    """Allowed keys of `config.evals.<name>` with their defaults, for the kind it names."""
    kind = section.get("kind") if isinstance(section, Mapping) else None
    if not isinstance(kind, str):
        raise ConfigError(f"config.evals.{name} has no `kind` (a string); set e.g. "
                          f"--config.evals.{name}.kind=zeroshot")
    spec = EVALUATORS.get_or_fail(kind, f"evals.{name}.kind")
    return {**EVAL_COMMON, **spec.options, "kind": kind}


def check_evals(evals: Mapping, facts: EvalFacts) -> None:
    """Each evaluator's schedule and batch size, then its own check (ConfigError / DataError)."""
    for name, section in evals.items():
        full = {**evaluator_schema(name, section), **section}
        if full["every"] < -1:
            fail(f"evals.{name}.every", f"is {full['every']}",
                 "use a number of steps, 0 (only at the end) or -1 (train.eval_every)")
        if "batch_size" in full and (full["batch_size"] <= 0 or full["batch_size"] % facts.batch_shards):
            fail(f"evals.{name}.batch_size", f"={full['batch_size']} does not divide over "
                 f"{facts.batch_shards} batch shards", f"use a multiple of {facts.batch_shards}")
        EVALUATORS[full["kind"]].check(name, full, facts)


@dataclasses.dataclass
class Scheduled:
    """An evaluator with the steps it runs at during training."""

    evaluator: Any
    every: int  # 0: only at the end of training

    @property
    def name(self) -> str:
        return self.evaluator.name

    def due(self, step: int, last_step: int) -> bool:
        return step == last_step or (self.every > 0 and step % self.every == 0)

    def run(self, params: Any) -> dict:
        return self.evaluator.run(params)


def build_evaluators(evals: Mapping, ctx: EvalContext, default_every: int = 0) -> list[Scheduled]:
    """One evaluator per config entry, missing keys from its defaults, with its schedule."""
    out = []
    for name, section in evals.items():
        full = {**evaluator_schema(name, section), **section}
        every = default_every if full["every"] == -1 else full["every"]
        options = {k: v for k, v in full.items() if k != "every"}
        out.append(Scheduled(EVALUATORS[full["kind"]].build(options, ctx), every))
    return out
