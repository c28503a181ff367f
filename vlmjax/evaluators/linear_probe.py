"""Linear probe (CLIP paper): logistic regression on frozen features, C swept on validation.

A validation split (the dataset's own, or `val_fraction` of train carved at random) picks C by
CLIP's coarse-to-fine sweep; the probe is then refit on train + validation with that C and
scored on the test split.
"""

import functools
from collections.abc import Mapping

import numpy as np

from vlmjax.evaluators.context import EvalContext
from vlmjax.evaluators.transfer_setup import COMMON, TransferSetup, check_transfer_config, metrics_of
from vlmjax.transfer.logistic import fit_logistic, search_c
from vlmjax.transfer.shots import carve_validation

DEFAULTS = {
    "kind": "linear_probe",
    **COMMON,
    "val_split": "",  # "" = carve `val_fraction` of the train split
    "val_fraction": 0.2,
    "max_iter": 1000,  # L-BFGS iterations per fit
}


class LinearProbe:
    """`run(params)` -> acc1 / acc5 / mean_per_class_recall of the probe, and the C it chose."""

    def __init__(self, cfg: Mapping, ctx: EvalContext):
        self.cfg = {**DEFAULTS, **cfg}
        self.name = f"linear_probe/{self.cfg['dataset']}"
        self.setup = TransferSetup(self.cfg, ctx, needs_text=False)

    def run(self, params: dict) -> dict[str, float]:
        cfg, setup = self.cfg, self.setup
        x, y = setup.split(params, "train")
        if cfg["val_split"]:
            vx, vy = setup.extractor.features(params, cfg["dataset"], cfg["val_split"])
        else:
            keep, held = carve_validation(len(y), cfg["val_fraction"])
            x, y, vx, vy = x[keep], y[keep], x[held], y[held]
        rows = len(y) + len(vy)  # the sweep and the refit share one compiled shape
        best, _ = search_c((x, y), (vx, vy), setup.num_classes, cfg["max_iter"], pad_rows_to=rows)
        head = fit_logistic(np.concatenate([x, vx]), np.concatenate([y, vy]), setup.num_classes,
                            [best.c], cfg["max_iter"], pad_rows_to=rows, init=best)[0]
        tx, ty = setup.split(params, "test")
        return {**metrics_of(head.logits(tx), ty, setup.num_classes), "C": best.c}


check = functools.partial(check_transfer_config)
