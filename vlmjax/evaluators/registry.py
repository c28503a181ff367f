"""The evaluator registry: `config.evals.<name>.kind` -> an evaluator, its options and check.

An evaluator is built once (data loaded, functions jitted) and then `run(params) -> metrics`
any number of times, during training (every `evals.<name>.every` steps) or from a checkpoint.
Adding one is one module (class, DEFAULTS, check) and one line here.
"""

import dataclasses
from collections.abc import Callable, Mapping
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
from vlmjax.evaluators.context import EvalContext, EvalFacts
from vlmjax.options import fail
from vlmjax.registry import Registry

# Keys every evaluator has: its kind, and how often it runs during training (steps; 0: only at
# the end; -1: every train.eval_every steps, the global schedule).
EVAL_COMMON = {"kind": "", "every": -1}


@dataclasses.dataclass(frozen=True)
class EvaluatorSpec:
    """A registered evaluator kind."""

    build: Callable[[Mapping, EvalContext], Any]  # (its full options, context) -> evaluator
    options: Mapping  # its keys with defaults (beyond kind and every)
    check: Callable[[str, Mapping, EvalFacts], None]  # (name, full options, facts) -> raises


def _spec(module: Any, cls: type) -> EvaluatorSpec:
    options = {k: v for k, v in module.DEFAULTS.items() if k not in EVAL_COMMON}
    return EvaluatorSpec(build=cls, options=options, check=module.check)


EVALUATORS: Registry[EvaluatorSpec] = Registry("evals.<name>.kind", {
    "zeroshot": _spec(zeroshot, zeroshot.ZeroShotClassification),
    "caption_zeroshot": _spec(caption_zeroshot, caption_zeroshot.CaptionZeroShotClassification),
    "captioning": _spec(captioning, captioning.Captioning),
    "retrieval": _spec(retrieval, retrieval.Retrieval),
    "linear_probe": _spec(linear_probe, linear_probe.LinearProbe),
    "fewshot": _spec(fewshot, fewshot.FewShot),
    "unsupervised": _spec(unsupervised, unsupervised.Unsupervised),
    "finetune": _spec(finetune, finetune.FineTune),
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
