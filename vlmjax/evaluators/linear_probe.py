"""Linear probe (CLIP paper): logistic regression on frozen features, C swept on validation.

A validation split (the dataset's own, or `val_fraction` of train carved at random) picks C by
CLIP's coarse-to-fine sweep; the probe is then refit on train + validation with that C and
scored on the test split.
"""

import dataclasses
from collections.abc import Mapping

import numpy as np

from vlmjax.evaluators.context import EvalContext, EvalFacts
from vlmjax.evaluators.transfer_setup import (
    TransferOptions,
    TransferSetup,
    check_transfer,
    metrics_of,
    require_at_least_one,
)
from vlmjax.evaluators.typed_options import options_from
from vlmjax.options import fail
from vlmjax.transfer.logistic import fit_logistic, search_c
from vlmjax.transfer.shots import carve_validation


@dataclasses.dataclass(frozen=True)
class Options(TransferOptions):
    """config.evals.<name> of kind 'linear_probe'."""

    val_split: str = ""  # "" = carve `val_fraction` of the train split
    val_fraction: float = 0.2
    max_iter: int = 1000  # L-BFGS iterations per fit


def check(name: str, options: Options, facts: EvalFacts) -> None:
    """Readable splits, a validation fraction in (0, 1), a positive L-BFGS budget."""
    if not options.val_split and not 0 < options.val_fraction < 1:
        fail(f"evals.{name}.val_fraction", f"is {options.val_fraction}",
             "carve a fraction in (0, 1) of the train split, or name a val_split")
    require_at_least_one(name, options, "max_iter")
    check_transfer(name, "linear_probe", options, facts, needs_text=False,
                   val_split=options.val_split)


class LinearProbe:
    """`run(params)` -> acc1 / acc5 / mean_per_class_recall of the probe, and the C it chose."""

    def __init__(self, options: Options | Mapping, ctx: EvalContext):
        self.options = options_from(Options, options)
        self.name = f"linear_probe/{self.options.dataset}"
        self.setup = TransferSetup(self.options, ctx, needs_text=False)

    def run(self, params: dict) -> dict[str, float]:
        o, setup = self.options, self.setup
        x, y = setup.split(params, "train")
        if o.val_split:
            vx, vy = setup.split(params, "val")
        else:
            keep, held = carve_validation(len(y), o.val_fraction)
            x, y, vx, vy = x[keep], y[keep], x[held], y[held]
        rows = len(y) + len(vy)  # the sweep and the refit share one compiled shape
        best, _ = search_c((x, y), (vx, vy), setup.num_classes, o.max_iter, pad_rows_to=rows)
        head = fit_logistic(np.concatenate([x, vx]), np.concatenate([y, vy]), setup.num_classes,
                            [best.c], o.max_iter, pad_rows_to=rows, init=best)[0]
        tx, ty = setup.split(params, "test")
        return {**metrics_of(head.logits(tx), ty, setup.num_classes), "C": best.c}
