"""Transfer methods against independent references: scikit-learn's logistic regression, a direct
NumPy ridge solve, hand-written Tip-Adapter formulas, zero-shot prompts for CoOp, and
hand-checked shot sampling."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from sklearn.linear_model import LogisticRegression

from tests.tolerances import accuracy_slack, ambiguous_rows, dot_atol, gamma, unit_roundoff
from vlmjax.errors import ConfigError, DataError
from vlmjax.transfer import closed_form, coop, logistic, tip_adapter
from vlmjax.transfer.shots import confident_per_class, few_shot_split


def _blobs(n: int, d: int, k: int, seed: int, spread: float = 1.2):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d))
    y = rng.integers(0, k, n)
    x = centers[y] + spread * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y


def sklearn_objective(w: np.ndarray, b: np.ndarray, c: float, x: np.ndarray, y: np.ndarray) -> float:
    """scikit-learn's LogisticRegression(C=c) objective (1.9, multinomial lbfgs),
    C * sum_i CE_i + ||W||^2 / 2 with the bias unpenalised, divided by C * n as scikit-learn's
    own solver scales it; in float64. w [d, C], b [C]."""
    w, b = np.asarray(w, np.float64), np.asarray(b, np.float64)
    z = np.asarray(x, np.float64) @ w + b
    z -= z.max(1, keepdims=True)
    ce = np.log(np.exp(z).sum(1)) - z[np.arange(len(y)), y]
    return float(ce.mean() + np.sum(w ** 2) / (2 * c * len(y)))


def objective_rtol(n: int) -> float:
    """How much worse than scikit-learn's float64 optimum our float32 L-BFGS may end: it ranks
    points by the float32 mean of n cross-entropies, which is only known to gamma(n) relative."""
    return gamma(n)


def test_logistic_regression_matches_scikit_learn():
    x, y = _blobs(600, 8, 3, seed=0)
    cs = [0.1, 1.0, 10.0]  # well-conditioned: one optimum, which both solvers reach
    heads = logistic.fit_logistic(x, y, 3, cs, tol=1e-5, pad_rows_to=700)  # padding is ignored
    for head, c in zip(heads, cs, strict=True):
        ref = LogisticRegression(C=c, max_iter=5000, tol=1e-8).fit(x, y)
        ours = sklearn_objective(head.w, head.b, c, x, y)
        assert ours <= sklearn_objective(ref.coef_.T, ref.intercept_, c, x, y) * (
            1 + objective_rtol(len(y))), c
        logits = head.logits(x)
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        want = ref.predict_proba(x)
        assert np.abs(probs - want).max() < 1e-3, c
        # So the predictions agree wherever 1e-3 decides them (every row here, measured).
        same = probs.argmax(1) == want.argmax(1)
        assert np.all(same | ambiguous_rows(want, 1e-3)), c


def test_regularisation_sweep_is_coarse_to_fine():
    x, y = _blobs(600, 8, 3, seed=1, spread=3.0)  # the shapes above: no new compilation
    head, sweep = logistic.search_c((x[:450], y[:450]), (x[450:], y[450:]), 3, max_iter=200,
                                    pad_rows_to=700)
    best = head.c
    log_c = np.log10(list(sweep))
    assert set(np.round(log_c, 6)) >= {-6, -4, -2, 0, 2, 4, 6}  # the coarse grid
    assert len(sweep) <= 7 + 2 * 4  # then two neighbours per halving: 1, 1/2, 1/4, 1/8 decade
    assert sweep[best] == max(sweep.values())
    finest = np.diff(np.sort(log_c)).min()
    assert finest == pytest.approx(1 / 8)
    assert {round(np.log10(best) - 1 / 8, 6), round(np.log10(best) + 1 / 8, 6)} & set(np.round(log_c, 6))


@pytest.mark.parametrize("n", [40, 6])  # more shots than dimensions, and fewer
def test_closed_form_equals_numpy_ridge_for_every_grid_value(n):
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, 10)).astype(np.float32)
    labels = np.arange(n) % 3
    weights, whitening = closed_form.ridge_weights(x, labels, 3)
    xw = (x - x.mean(0)) / (x.std(0) + 1e-5)
    xw = np.concatenate([xw, np.full((n, 1), closed_form.BIAS_FEATURE)], axis=1).astype(np.float64)
    targets = 2.0 * np.eye(3)[labels] - 1.0
    for i, l2 in enumerate(closed_form.L2_GRID):
        direct = np.linalg.solve(xw.T @ xw + l2 * np.eye(11), xw.T @ targets)
        scale = np.abs(direct).max()
        assert np.abs(weights[i] - direct).max() <= 2e-3 * scale + 1e-5, l2
    test = rng.normal(size=(5, 10)).astype(np.float32)
    scores = closed_form.ridge_scores(weights, whitening, test)
    tw = np.concatenate([(test - x.mean(0)) / (x.std(0) + 1e-5), np.full((5, 1), 100.0)], axis=1)
    np.testing.assert_allclose(scores[3], tw @ weights[3], rtol=1e-4, atol=1e-4)


def _tip_problem(seed: int = 0):
    x, y = _blobs(120, 6, 4, seed=seed, spread=1.5)
    classifier = np.stack([x[y == c].mean(0) for c in range(4)])
    classifier += np.random.default_rng(seed).normal(scale=0.5, size=classifier.shape)
    classifier /= np.linalg.norm(classifier, axis=1, keepdims=True)
    return x, y, classifier.astype(np.float32)


def _tip_atol(x: np.ndarray, keys: np.ndarray, alpha: float, beta: float) -> float:
    """Largest difference between two float32 computations of the Tip-Adapter logits of unit
    features x [n, d] (tests.tolerances): the zero-shot term is 100 times a dot product of unit
    vectors (one more rounding for the scale). Each cache term exp(-beta * (1 - a)) is at most 1;
    it moves by beta times the affinity a's error, plus roundings of 1 - a (|1 - a| <= 2),
    beta * (1 - a), and the exp (taken as 2 ulp): (4 beta + 4) u. Summing n_keys of them adds
    gamma(n_keys) * n_keys; scaling by alpha and adding the zero-shot term one rounding each."""
    k, n_keys, u = x.shape[1] + 1, len(keys), unit_roundoff()
    zs = tip_adapter.ZEROSHOT_SCALE
    per_key = beta * dot_atol(k) + 2 * (4 * beta + 4) * u
    return (zs * dot_atol(k) + alpha * n_keys * (per_key + 2 * gamma(n_keys))
            + 4 * u * (zs + alpha * n_keys))


def test_tip_adapter_with_alpha_zero_is_zero_shot_and_its_cache_formula():
    x, y, classifier = _tip_problem()
    adapter = tip_adapter.TipAdapter(classifier=classifier, keys=x[:40], labels=y[:40], alpha=0.0)
    zeroshot = 100.0 * x[40:].astype(np.float64) @ classifier.T.astype(np.float64)
    # XLA against float64: alpha = 0 adds exactly zero; the zero-shot dot products differ.
    np.testing.assert_allclose(adapter.logits(x[40:]), zeroshot, rtol=0,
                               atol=100.0 * dot_atol(x.shape[1] + 1))
    a = tip_adapter.TipAdapter(classifier=classifier, keys=x[:40], labels=y[:40], alpha=1.3, beta=4.0)
    cache = np.exp(-4.0 * (1 - x[40:].astype(np.float64) @ x[:40].T.astype(np.float64))) @ np.eye(4)[y[:40]]
    np.testing.assert_allclose(a.logits(x[40:]), zeroshot + 1.3 * cache, rtol=0,
                               atol=_tip_atol(x, x[:40], 1.3, 4.0))


def _numpy_tip_accuracy(x, y, classifier, keys, key_labels, alpha, beta) -> tuple[float, float]:
    """Float64 Tip-Adapter accuracy at one grid point and how far a float32 computation of it
    can be off (the rows whose prediction float32 rounding can flip)."""
    x64 = x.astype(np.float64)
    logits = (tip_adapter.ZEROSHOT_SCALE * x64 @ classifier.T.astype(np.float64)
              + alpha * np.exp(-beta * (1 - x64 @ keys.T.astype(np.float64))) @ np.eye(4)[key_labels])
    return float(np.mean(logits.argmax(1) == y)), accuracy_slack(logits, _tip_atol(x, keys, alpha, beta))


def test_tip_adapter_search_finds_the_best_grid_point():
    x, y, classifier = _tip_problem(seed=3)
    adapter = tip_adapter.TipAdapter(classifier=classifier, keys=x[:40], labels=y[:40])
    found = tip_adapter.search(adapter, x[40:80], y[40:80])
    assert found.alpha in tip_adapter.ALPHAS and found.beta in tip_adapter.BETAS

    def accuracy(alpha, beta):
        return _numpy_tip_accuracy(x[40:80], y[40:80], classifier, x[:40], y[:40], alpha, beta)

    # The search maximises its own float32 accuracy over the full grid, so it is at least as
    # accurate as every 7th beta; in float64 that holds up to the rows rounding can flip.
    found_acc, found_slack = accuracy(found.alpha, found.beta)
    best = max(acc - slack for acc, slack in (accuracy(a, b) for b in tip_adapter.BETAS[::7]
                                              for a in tip_adapter.ALPHAS))
    assert found_acc + found_slack >= best


def test_tip_adapter_f_lowers_the_training_loss():
    x, y, classifier = _tip_problem(seed=5)
    adapter = tip_adapter.TipAdapter(classifier=classifier, keys=x[:40], labels=y[:40])

    def loss(a):
        logits = a.logits(x[:40])
        logits = logits - logits.max(1, keepdims=True)
        return -np.mean(logits[np.arange(40), y[:40]] - np.log(np.exp(logits).sum(1)))

    tuned = tip_adapter.fine_tune_keys(adapter, epochs=10, batch_size=16)
    assert loss(tuned) < loss(adapter)
    assert not np.allclose(tuned.keys, adapter.keys)


def test_few_shot_sets_are_nested_disjoint_and_balanced():
    labels = np.repeat(np.arange(3), 10)
    one, val1 = few_shot_split(labels, 3, 1, seed=0)
    four, val4 = few_shot_split(labels, 3, 4, seed=0)
    assert set(one) <= set(four)  # the same seed grows the same per-class order
    assert not set(four) & set(val4)
    assert np.bincount(labels[four]).tolist() == [4, 4, 4]
    assert np.bincount(labels[val4]).tolist() == [4, 4, 4] and len(val1) == 3
    assert set(few_shot_split(labels, 3, 4, seed=1)[0]) != set(four)
    with pytest.raises(DataError, match="needs 14 examples of every class"):
        few_shot_split(labels, 3, 8, seed=0, val_shots=6)


def test_pseudo_labels_keep_the_most_confident_per_predicted_class():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.8, 0.2], [0.3, 0.7], [0.45, 0.55], [0.2, 0.8]])
    idx, pseudo = confident_per_class(probs, per_class=2)
    assert idx.tolist() == [0, 2, 5, 3] and pseudo.tolist() == [0, 0, 1, 1]
    idx, pseudo = confident_per_class(probs, per_class=2, skip=2)
    assert idx.tolist() == [1, 4] and pseudo.tolist() == [0, 1]


@pytest.fixture(scope="module")
def tiny_text_model():
    from tests.conftest import TINY_CONFIG
    from vlmjax.config import load_config_file
    from vlmjax.models.registry import FAMILIES
    from vlmjax.tokenizers import build_tokenizer
    names = ["t-shirt", "trouser", "ankle boot", "bag"]
    tokenizer = build_tokenizer("trained_bpe", vocab_size=600,
                                texts=[f"a photo of a {c}." for c in names] * 5 + ["x y z"])
    cfg = load_config_file(TINY_CONFIG).to_dict()
    model = FAMILIES["two_tower"].build(cfg["model"], tokenizer.vocab_size, 12,
                                        rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    return names, tokenizer, graphdef, nnx.to_pure_dict(state), model


def test_coop_from_a_phrase_equals_zero_shot_with_that_template(tiny_text_model):
    names, tokenizer, graphdef, params, model = tiny_text_model
    prompts = coop.class_prompts(tokenizer, names, "a photo of a", 12)
    assert prompts.length == 4 and prompts.start == 1  # after the start token
    trainer = coop.CoopTrainer(graphdef, params, prompts, coop.CoopOptions(context_init="a photo of a"))
    ids, mask = tokenizer.encode([f"a photo of a {c}." for c in names], 12)
    zeroshot = np.asarray(model.encode_text(jnp.asarray(ids), jnp.asarray(mask)))
    np.testing.assert_allclose(trainer.classifier(trainer.initial_context(0)), zeroshot, atol=1e-6)


def test_coop_training_lowers_the_loss_and_long_prompts_fail_clearly(tiny_text_model):
    names, tokenizer, graphdef, params, model = tiny_text_model
    prompts = coop.class_prompts(tokenizer, names, " ".join([coop.PLACEHOLDER] * 2), 12)
    assert prompts.length == 2
    trainer = coop.CoopTrainer(graphdef, params, prompts, coop.CoopOptions(epochs=30, lr=0.05))
    rng = np.random.default_rng(0)
    features = rng.normal(size=(16, 16)).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    labels = np.arange(16) % 4
    scale = float(np.exp(params["logit_scale"]))

    def loss(context):
        logits = scale * features @ trainer.classifier(context).T
        logits -= logits.max(1, keepdims=True)
        return -np.mean(logits[np.arange(16), labels] - np.log(np.exp(logits).sum(1)))

    trained = trainer.train(features, labels, shots=4, seed=0)
    assert loss(trained) < loss(trainer.initial_context(0))
    with pytest.raises(ConfigError, match="CoOp prompts need up to .* tokens .* takes 12"):
        coop.class_prompts(tokenizer, names, " ".join([coop.PLACEHOLDER] * 16), 12)
