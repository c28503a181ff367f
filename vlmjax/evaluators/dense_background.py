"""Which pixels are background: the decision rules of zero-shot segmentation.

Every pixel comes with five decision features (`FEATURES`, `decision_features`): its best class
score (`score` of the evaluator: cosine, probability or logit), the log of its patch embedding's
norm before normalisation (bilinearly upsampled like the scores), the margin of its best class
over the best background prompt, and the score and log norm relative to the highest of its
canvas (a patch of empty canvas scores low against its own canvas's items whatever the canvas's
overall level; on the Fashion-MNIST grid scenes -0.1 to +2.2 points of mIoU with background
for the "learned" rule, five patch-phrase runs re-evaluated). A rule turns them into one
foreground value and calls a pixel background when that value is below its threshold:
- "none": never background; "threshold" / "model": the score against a given threshold (the
  model's: -logit_bias / exp(logit_scale), where its sigmoid is 1/2);
- "prompts": the margin against 0 (a background prompt outscores every class);
- "calibrated": the score, threshold chosen to maximise mIoU on held-out canvases;
- "learned": a logistic regression of foreground on the three (standardised) features, fit on
  the held-out canvases' pixels, its threshold chosen as "calibrated" does. A pooled tower's
  patch norms carry objectness its cosines do not (measured on the scenes: the norm alone
  separates CLIP's background patches from item patches).
Both fitted rules see only the calibration split, never the split evaluated.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from vlmjax.evaluators.dense_metrics import confusion, iou_per_class

FEATURES = ("score", "log_norm", "prompt_margin", "relative_score", "relative_log_norm")
CANDIDATES = 101  # thresholds tried by calibration: quantiles of the value on held-out pixels
MAX_FIT_PIXELS = 200_000
NEWTON_STEPS = 25
RIDGE = 1e-4


def decision_features(score: jax.Array, log_norm: jax.Array, margin: jax.Array) -> jax.Array:
    """Per pixel [b, H, W] each -> the decision features [b, H, W, 5] (`FEATURES`): the three
    given and the score and log norm minus their canvas's highest."""
    def relative(v: jax.Array) -> jax.Array:
        return v - v.max(axis=(1, 2), keepdims=True)
    return jnp.stack([score, log_norm, margin, relative(score), relative(log_norm)], axis=-1)


@dataclasses.dataclass(frozen=True)
class BackgroundRule:
    """A fitted rule: `value(features)` < `threshold` means background (module doc)."""

    kind: str
    threshold: float = -np.inf
    mean: np.ndarray | None = None  # learned: feature standardisation
    std: np.ndarray | None = None
    weights: np.ndarray | None = None  # learned: logistic weights, bias last

    def value(self, features: np.ndarray) -> np.ndarray:
        """The foreground value of each pixel's features [..., len(FEATURES)]."""
        if self.kind == "none":
            return np.full(features.shape[:-1], np.inf)
        if self.kind == "prompts":
            return features[..., 2]
        if self.kind == "learned":
            z = (features - self.mean) / self.std
            return z @ self.weights[:-1] + self.weights[-1]
        return features[..., 0]

    def background(self, features: np.ndarray) -> np.ndarray:
        return self.value(features) < self.threshold


def fit_logistic(features: np.ndarray, foreground: np.ndarray) -> BackgroundRule:
    """Logistic regression of `foreground` on standardised features by Newton's method (ridge
    RIDGE, no threshold yet); classes weighted equally."""
    x = np.asarray(features, np.float64)
    finite = np.all(np.isfinite(x), axis=1)
    x, y = x[finite], np.asarray(foreground, np.float64)[finite]
    if len(np.unique(y)) < 2:
        raise ValueError("the calibration pixels are all foreground or all background")
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    design = np.concatenate([(x - mean) / std, np.ones((len(x), 1))], axis=1)
    balance = np.where(y > 0, 0.5 / y.mean(), 0.5 / (1 - y.mean()))
    w = np.zeros(design.shape[1])
    for _ in range(NEWTON_STEPS):
        p = 1 / (1 + np.exp(-np.clip(design @ w, -30, 30)))
        gradient = design.T @ (balance * (p - y)) / len(y) + RIDGE * w
        hessian = (design * (balance * p * (1 - p))[:, None]).T @ design / len(y)
        w -= np.linalg.solve(hessian + RIDGE * np.eye(len(w)), gradient)
    return BackgroundRule("learned", 0.0, mean, std, w)


def calibrated_threshold(value: np.ndarray, predicted: np.ndarray, labels: np.ndarray,
                         background: int, num_classes: int) -> float:
    """The threshold on `value` maximising mIoU (with background) of `predicted` class ids
    where value >= threshold, background elsewhere, against `labels` (held-out pixels)."""
    finite = value[np.isfinite(value)]
    candidates = np.unique(np.quantile(finite, np.linspace(0, 1, CANDIDATES)))
    mious = [np.nanmean(iou_per_class(confusion(
        labels, np.where(value < t, background, predicted), num_classes))) for t in candidates]
    return float(candidates[int(np.nanargmax(mious))])


def fit_rule(kind: str, features: np.ndarray, predicted: np.ndarray, labels: np.ndarray,
             background: int, num_classes: int) -> BackgroundRule:
    """A "calibrated" or "learned" rule from held-out pixels: features [n, F], predicted class
    ids [n] (before any background decision), labels [n] (IGNORE pixels are left out)."""
    counted = (labels >= 0) & (labels < num_classes)
    features, predicted, labels = features[counted], predicted[counted], labels[counted]
    if len(labels) > MAX_FIT_PIXELS:  # a fixed subsample: the same rule on every run
        keep = np.random.default_rng(0).choice(len(labels), MAX_FIT_PIXELS, replace=False)
        features, predicted, labels = features[keep], predicted[keep], labels[keep]
    rule = (fit_logistic(features, labels != background) if kind == "learned"
            else BackgroundRule("calibrated"))
    threshold = calibrated_threshold(rule.value(features), predicted, labels, background,
                                     num_classes)
    return dataclasses.replace(rule, threshold=threshold)
