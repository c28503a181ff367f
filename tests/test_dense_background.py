"""Background rules of zero-shot segmentation: calibration on held-out pixels and the learned
logistic rule, against hand-made pixels whose answer is known."""

import numpy as np
import pytest

from vlmjax.evaluators.dense_background import (
    BackgroundRule,
    calibrated_threshold,
    fit_logistic,
    fit_rule,
)


def test_calibrated_threshold_separates_when_the_score_does():
    value = np.array([0.1, 0.2, 0.8, 0.9, 0.85])
    predicted = np.array([2, 2, 2, 1, 1])
    labels = np.array([0, 0, 2, 1, 1])  # background 0
    t = calibrated_threshold(value, predicted, labels, background=0, num_classes=3)
    assert 0.2 < t <= 0.8
    rule = BackgroundRule("calibrated", t)
    np.testing.assert_array_equal(rule.background(np.stack([value, 0 * value, 0 * value], 1)),
                                  [True, True, False, False, False])


def test_the_learned_rule_finds_the_feature_that_carries_objectness():
    rng = np.random.default_rng(0)
    n = 4000
    foreground = rng.random(n) < 0.3
    score = rng.normal(size=n)  # uninformative
    log_norm = np.where(foreground, 1.0, -1.0) + 0.3 * rng.normal(size=n)
    features = np.stack([score, log_norm, rng.normal(size=n)], 1)
    labels = np.where(foreground, 1, 0)
    predicted = np.ones(n, int)  # every pixel's best class is the right one when foreground
    learned = fit_rule("learned", features, predicted, labels, background=0, num_classes=2)
    calibrated = fit_rule("calibrated", features, predicted, labels, background=0, num_classes=2)
    fresh = rng.random(n) < 0.3
    test = np.stack([rng.normal(size=n), np.where(fresh, 1.0, -1.0) + 0.3 * rng.normal(size=n),
                     rng.normal(size=n)], 1)
    assert np.mean(learned.background(test) == ~fresh) > 0.99
    assert np.mean(calibrated.background(test) == ~fresh) < 0.9
    assert abs(learned.weights[1]) > 5 * max(abs(learned.weights[0]), abs(learned.weights[2]))


def test_fit_logistic_matches_the_newton_optimum():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 3))
    y = (x @ [1.5, -0.5, 0.0] + 0.2 * rng.normal(size=500)) > 0
    rule = fit_logistic(x, y)
    z = np.concatenate([(x - rule.mean) / rule.std, np.ones((500, 1))], 1)
    p = 1 / (1 + np.exp(-z @ rule.weights))
    balance = np.where(y, 0.5 / y.mean(), 0.5 / (1 - y.mean()))
    gradient = z.T @ (balance * (p - y)) / 500 + 1e-4 * rule.weights
    np.testing.assert_allclose(gradient, 0, atol=1e-6)  # the regularised optimum
    with pytest.raises(ValueError, match="all foreground or all background"):
        fit_logistic(x, np.ones(500, bool))


def test_decision_features_add_the_score_and_norm_relative_to_their_canvas():
    from vlmjax.evaluators.dense_background import FEATURES, decision_features
    score = np.array([[[0.2, 0.5], [0.1, 0.3]], [[0.9, 0.8], [0.7, 0.6]]], np.float32)
    log_norm = np.array([[[1.0, 2.0], [3.0, 0.5]], [[0.0, -1.0], [-2.0, -3.0]]], np.float32)
    margin = np.zeros_like(score)
    got = np.asarray(decision_features(score, log_norm, margin))
    assert got.shape == (2, 2, 2, len(FEATURES))
    eps = float(np.finfo(np.float32).eps)  # XLA against NumPy: one rounding apart at most
    np.testing.assert_allclose(got[..., :3], np.stack([score, log_norm, margin], -1), rtol=eps)
    np.testing.assert_allclose(got[..., 3], score - score.max(axis=(1, 2), keepdims=True),
                               rtol=eps, atol=eps)
    np.testing.assert_allclose(got[..., 3].max(axis=(1, 2)), 0, atol=eps)
    np.testing.assert_allclose(got[..., 4], log_norm - np.array([3.0, 0.0])[:, None, None])
