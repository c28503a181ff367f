"""Few-shot transfer: k labelled images per class, several methods, mean and std over seeds.

For each seed and k (default 1, 2, 4, 8, 16; 3 seeds), the k shots per class and a validation
set of min(k, 4) more per class are drawn from the train split's frozen features
(`transfer.shots`). Each method picks its hyperparameters on that validation set, learns from
the k shots only, and is scored on the whole test split:
- `linear_probe`: logistic regression, C by CLIP's sweep;
- `closed_form`: big_vision's ridge regression, the l2 strength from its grid;
- `tip_adapter`: the training-free cache model, alpha / beta by the paper's grid search;
- `tip_adapter_f`: its keys fine-tuned, then alpha / beta searched again;
- `coop`: learned prompt context through the frozen text tower.
Metrics are `<method>/<k>shot/acc1` (mean over seeds), `.../acc1_std` and
`.../mean_per_class_recall`.
"""

import dataclasses
from collections.abc import Callable

import numpy as np

from vlmjax.evaluators.context import EvalFacts
from vlmjax.evaluators.transfer_setup import (
    MethodsEvaluator,
    MethodsOptions,
    check_methods,
    fail_option,
    metrics_of,
    require_at_least_one,
)
from vlmjax.transfer import closed_form, coop, logistic, tip_adapter
from vlmjax.transfer.shots import few_shot_split

TEXT_METHODS = ("tip_adapter", "tip_adapter_f", "coop")


@dataclasses.dataclass(frozen=True)
class Options(MethodsOptions):
    """config.evals.<name> of kind 'fewshot'."""

    shots: tuple[int, ...] = (1, 2, 4, 8, 16)
    seeds: int = 3
    methods: tuple[str, ...] = ("linear_probe", "closed_form", "tip_adapter", "tip_adapter_f", "coop")
    tip_f_epochs: int = 20


@dataclasses.dataclass(frozen=True)
class ShotTask:
    """One (k, seed) draw: what a method learns from and what it is scored on."""

    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray]
    test_features: np.ndarray
    num_classes: int
    shots: int
    seed: int
    classifier: np.ndarray | None  # zero-shot class embeddings [C, e]
    coop: coop.CoopTrainer | None
    options: Options


def _linear_probe(t: ShotTask) -> np.ndarray:
    # Rows padded to 16 shots per class: every k reuses one compiled fit.
    pad = t.num_classes * max(t.options.shots)
    head, _ = logistic.search_c(t.train, t.val, t.num_classes, t.options.max_iter, pad_rows_to=pad)
    return head.logits(t.test_features)  # fit on the shots with the C the shots' val chose


def _closed_form(t: ShotTask) -> np.ndarray:
    weights, whitening = closed_form.ridge_weights(*t.train, t.num_classes)
    val_scores = closed_form.ridge_scores(weights, whitening, t.val[0])
    accuracy = (val_scores.argmax(axis=-1) == t.val[1][None]).mean(axis=1)
    best = len(accuracy) - 1 - int(np.argmax(accuracy[::-1]))  # ties: the strongest l2
    return closed_form.ridge_scores(weights[best: best + 1], whitening, t.test_features)[0]


def _tip(t: ShotTask) -> tip_adapter.TipAdapter:
    return tip_adapter.TipAdapter(classifier=t.classifier, keys=t.train[0], labels=t.train[1])


def _tip_adapter(t: ShotTask) -> np.ndarray:
    return tip_adapter.search(_tip(t), *t.val).logits(t.test_features)


def _tip_adapter_f(t: ShotTask) -> np.ndarray:
    tuned = tip_adapter.fine_tune_keys(_tip(t), epochs=t.options.tip_f_epochs, seed=t.seed)
    return tip_adapter.search(tuned, *t.val).logits(t.test_features)


def _coop(t: ShotTask) -> np.ndarray:
    context = t.coop.train(*t.train, shots=t.shots, seed=t.seed)
    return t.test_features @ t.coop.classifier(context).T


METHODS: dict[str, Callable[[ShotTask], np.ndarray]] = {
    "linear_probe": _linear_probe, "closed_form": _closed_form, "tip_adapter": _tip_adapter,
    "tip_adapter_f": _tip_adapter_f, "coop": _coop,
}


class FewShot(MethodsEvaluator):
    """`run(params)` -> per method and k: mean / std over seeds of test accuracy."""

    KIND = "fewshot"
    OPTIONS = Options
    METHODS = tuple(METHODS)
    TEXT_METHODS = TEXT_METHODS

    def run(self, params: dict) -> dict[str, float]:
        o, setup = self.options, self.setup
        x, y = setup.split(params, "train")
        tx, ty = setup.split(params, "test")
        classifier = setup.text_classifier(params) if setup.zeroshot else None
        trainer = self.coop_trainer(params) if self.prompts else None
        runs: dict[tuple[str, int], list[dict]] = {}
        for seed in range(o.seeds):
            for k in sorted(o.shots):
                train, val = few_shot_split(y, setup.num_classes, k, seed)
                task = ShotTask(train=(x[train], y[train]), val=(x[val], y[val]), test_features=tx,
                                num_classes=setup.num_classes, shots=k, seed=seed,
                                classifier=classifier, coop=trainer, options=o)
                for method in o.methods:
                    runs.setdefault((method, k), []).append(
                        metrics_of(METHODS[method](task), ty, setup.num_classes))
        out = {}
        for (method, k), results in runs.items():
            acc = [r["acc1"] for r in results]
            out[f"{method}/{k}shot/acc1"] = float(np.mean(acc))
            out[f"{method}/{k}shot/acc1_std"] = float(np.std(acc))
            out[f"{method}/{k}shot/mean_per_class_recall"] = float(
                np.mean([r["mean_per_class_recall"] for r in results]))
        return out


def check(name: str, options: Options, facts: EvalFacts) -> None:
    """Known methods, positive shots, seeds and budgets, the splits readable, text if used."""
    if not options.shots or any(not isinstance(k, int) or k < 1 for k in options.shots):
        fail_option(name, "shots", f"= {list(options.shots)}",
                    "give positive whole numbers of images per class, e.g. (1, 2, 4, 8, 16)")
    require_at_least_one(name, options, "seeds")
    check_methods(name, "fewshot", options, facts, tuple(METHODS), TEXT_METHODS)
