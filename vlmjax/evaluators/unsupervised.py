"""Unsupervised transfer (UPL, Huang et al. 2022): learn from zero-shot pseudo-labels only.

The zero-shot classifier labels the train split; for each class the `per_class` images most
confidently predicted as it (UPL's default 16) become its training set, and a linear head
(`linear`) or CoOp prompts (`coop`) are trained on them. No ground-truth label is used: the
linear head's C is chosen on the next `per_class` most confident images of each class, a
pseudo-labelled validation set. Reports each method's test accuracy, its gain over zero-shot,
and (as a diagnostic) how many pseudo-labels were right.
"""


import dataclasses

import numpy as np
from scipy.special import softmax

from vlmjax.evaluators.context import EvalFacts
from vlmjax.evaluators.transfer_setup import (
    MethodsEvaluator,
    MethodsOptions,
    check_methods,
    metrics_of,
    require_at_least_one,
)
from vlmjax.transfer.logistic import search_c
from vlmjax.transfer.shots import confident_per_class

METHODS = ("linear", "coop")


@dataclasses.dataclass(frozen=True)
class Options(MethodsOptions):
    """config.evals.<name> of kind 'unsupervised'."""

    per_class: int = 16  # pseudo-labelled images kept per class (UPL's default)
    methods: tuple[str, ...] = METHODS  # coop_epochs 0: CoOp's schedule for `per_class` shots


def check(name: str, options: Options, facts: EvalFacts) -> None:
    """Known methods, positive sizes, the splits readable, the zero-shot classifier available."""
    require_at_least_one(name, options, "per_class")
    check_methods(name, "unsupervised", options, facts, METHODS, text_methods=METHODS)


class Unsupervised(MethodsEvaluator):
    """`run(params)` -> zero-shot acc1 and, per method, acc1 and gain over zero-shot."""

    KIND = "unsupervised"
    OPTIONS = Options
    METHODS = METHODS
    TEXT_METHODS = METHODS  # both start from the zero-shot pseudo-labels

    def run(self, params: dict) -> dict[str, float]:
        o, setup = self.options, self.setup
        x, y = setup.split(params, "train")
        tx, ty = setup.split(params, "test")
        classifier = setup.text_classifier(params)
        scale = float(np.exp(np.asarray(params["logit_scale"])))
        probs = softmax(scale * x @ classifier.T, axis=1)
        train, pseudo = confident_per_class(probs, o.per_class)
        val, val_pseudo = confident_per_class(probs, o.per_class, skip=o.per_class)
        zeroshot = metrics_of(tx @ classifier.T, ty, setup.num_classes)["acc1"]
        out = {"zeroshot/acc1": zeroshot, "pseudo_label_accuracy": float(np.mean(y[train] == pseudo)),
               "pseudo_labelled": float(len(train))}
        for method in o.methods:
            if method == "linear":
                rows = o.per_class * setup.num_classes  # one compiled shape
                head, _ = search_c((x[train], pseudo), (x[val], val_pseudo), setup.num_classes,
                                   o.max_iter, pad_rows_to=rows)
                scores = head.logits(tx)
            else:
                trainer = self.coop_trainer(params)
                context = trainer.train(x[train], pseudo, shots=o.per_class, seed=0)
                scores = tx @ trainer.classifier(context).T
            acc = metrics_of(scores, ty, setup.num_classes)["acc1"]
            out[f"{method}/acc1"] = acc
            out[f"{method}/gain"] = acc - zeroshot
        return out

