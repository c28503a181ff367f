"""Transfer evaluators end to end on a trained tiny CLIP checkpoint: linear probe (its solver
against scikit-learn's objective on the same cached features), few-shot methods, unsupervised
transfer and fine-tuning (whose step-0 head is the zero-shot classifier, checked against a
float64 zero-shot on the cached features), through `vlmjax.evaluate`."""

import glob
import os
import shutil

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from tests.test_transfer import objective_rtol, sklearn_objective
from tests.tolerances import accuracy_slack, dot_atol, image_tower_atol
from vlmjax.evaluate import evaluate
from vlmjax.evaluators import frozen_features
from vlmjax.evaluators.zeroshot import class_embeddings
from vlmjax.transfer import logistic
from vlmjax.transfer.shots import carve_validation


def _suite(config) -> ml_collections.ConfigDict:
    suite = ml_collections.ConfigDict(config.to_dict())
    suite.evals = ml_collections.ConfigDict(dict(
        zeroshot=dict(kind="zeroshot", batch_size=200),
        # The default L-BFGS budget: the whole sweep takes about a second on these features.
        linear_probe=dict(kind="linear_probe", batch_size=200),
        fewshot=dict(kind="fewshot", batch_size=200, shots=(1, 4), seeds=2, max_iter=20,
                     tip_f_epochs=2, coop_num_context=2, coop_epochs=2),
        unsupervised=dict(kind="unsupervised", batch_size=200, per_class=4, max_iter=20,
                          coop_num_context=2, coop_epochs=2),
        finetune=dict(kind="finetune", batch_size=200, steps=0)))
    return suite


@pytest.fixture(scope="module")
def transfer_results(trained_run, tmp_path_factory):
    config, trained, _ = trained_run
    workdir = str(tmp_path_factory.mktemp("transfer") / "run")
    shutil.copytree(trained, workdir)  # results.json and the cache are written into it
    return config, workdir, evaluate(_suite(config), workdir)["evals"]


def _cached(workdir: str, kind: str) -> dict:
    """The one cache file of step 40 of `kind` ("features/fashion_mnist_train", ...)."""
    (path,) = glob.glob(os.path.join(workdir, "cache", f"{kind}_step_40_*.npz"))
    with np.load(path) as data:
        return dict(data)


def _zeroshot_scores(workdir: str) -> tuple[np.ndarray, np.ndarray]:
    """Float64 cosine scores [200, 10] of the cached test features against the classifier built
    from the cached prompt features, and the labels: an independent zero-shot reference."""
    test = _cached(workdir, "features/fashion_mnist_test")
    classifier = np.asarray(class_embeddings(jnp.asarray(_cached(workdir, "zeroshot/fashion_mnist")
                                                         ["embeds"]), 10), np.float64)
    return test["features"].astype(np.float64) @ classifier.T, test["labels"]


def test_linear_probe_reaches_scikit_learns_optimum_on_the_cached_features(transfer_results):
    _, workdir, evals = transfer_results
    probe = evals["linear_probe/fashion_mnist"]
    cached = sorted(glob.glob(os.path.join(workdir, "cache", "features", "fashion_mnist_*_step_40_*.npz")))
    assert len(cached) == 2  # train and test, keyed by checkpoint and preprocessing
    train = _cached(workdir, "features/fashion_mnist_train")
    x, y = train["features"], train["labels"]
    test = _cached(workdir, "features/fashion_mnist_test")["features"]
    assert x.shape == (640, 16) and test.shape == (200, 16)
    assert probe["acc1"] > 0.5  # chance is 0.1
    c = probe["C"]
    assert round(8 * np.log10(c)) == pytest.approx(8 * np.log10(c)) and 1e-6 <= c <= 1e6  # swept
    # The probe's C may be weak regularisation, where the optimum is ill-conditioned: two correct
    # solvers stop at different points whose predictions differ on a few images. So the solver
    # is judged by the objective both minimise, at the probe's C, on the features it refits on.
    keep, held = carve_validation(len(y), 0.2)
    x, y = np.concatenate([x[keep], x[held]]), np.concatenate([y[keep], y[held]])
    # tol below float32's gradient floor: L-BFGS runs its 1000 iterations.
    (head,) = logistic.fit_logistic(x, y, 10, [c], max_iter=1000, tol=1e-6)
    reference = LogisticRegression(C=c, max_iter=5000, tol=1e-8).fit(x, y)
    ours = sklearn_objective(head.w, head.b, c, x, y)
    theirs = sklearn_objective(reference.coef_.T, reference.intercept_, c, x, y)
    assert ours <= theirs * (1 + objective_rtol(len(y))), (ours, theirs)


def test_fewshot_and_unsupervised_report_every_method_and_shot(transfer_results):
    config, workdir, evals = transfer_results
    fewshot = evals["fewshot/fashion_mnist"]
    for method in ("linear_probe", "closed_form", "tip_adapter", "tip_adapter_f", "coop"):
        for k in (1, 4):
            assert 0.0 <= fewshot[f"{method}/{k}shot/acc1"] <= 1.0
            assert fewshot[f"{method}/{k}shot/acc1_std"] >= 0.0
    unsupervised = evals["unsupervised/fashion_mnist"]
    scores, labels = _zeroshot_scores(workdir)
    reference = np.mean(scores.argmax(1) == labels)
    # The unsupervised evaluator scores the cached features in float32 NumPy: dot products of
    # unit vectors, which decide the argmax except on rows closer than their rounding.
    cosine_atol = dot_atol(config.model.embed_dim)
    assert abs(unsupervised["zeroshot/acc1"] - reference) <= accuracy_slack(scores, cosine_atol) + 1e-9
    # The zero-shot evaluator embeds the images in its own program.
    slack = accuracy_slack(scores, image_tower_atol(config.model.to_dict()) + cosine_atol)
    assert abs(evals["zeroshot/fashion_mnist"]["acc1"] - reference) <= slack + 1e-9
    assert unsupervised["pseudo_labelled"] <= 40
    for method in ("linear", "coop"):
        assert unsupervised[f"{method}/gain"] == pytest.approx(
            unsupervised[f"{method}/acc1"] - unsupervised["zeroshot/acc1"])


def test_finetune_head_starts_as_the_zero_shot_classifier(transfer_results):
    config, workdir, evals = transfer_results
    finetune = evals["finetune/fashion_mnist"]
    scores, labels = _zeroshot_scores(workdir)
    # Its head is exp(logit_scale) times the zero-shot classifier on the backbone's embeddings,
    # in another program: the scale's rounding is one more.
    slack = accuracy_slack(scores, image_tower_atol(config.model.to_dict())
                           + dot_atol(config.model.embed_dim + 1))
    assert abs(finetune["zeroshot_head/acc1"] - np.mean(scores.argmax(1) == labels)) <= slack + 1e-9
    assert finetune["acc1"] == finetune["zeroshot_head/acc1"]  # zero steps: the same program


def test_second_evaluation_reads_features_from_the_cache(transfer_results, monkeypatch):
    config, workdir, evals = transfer_results

    def no_extraction(*args, **kwargs):
        raise AssertionError("features were extracted again instead of read from the cache")

    monkeypatch.setattr(frozen_features.FeatureExtractor, "_extract", no_extraction)
    suite = _suite(config)
    suite.evals = ml_collections.ConfigDict({"linear_probe": suite.evals.linear_probe.to_dict()})
    again = evaluate(suite, workdir)["evals"]["linear_probe/fashion_mnist"]
    assert again == evals["linear_probe/fashion_mnist"]


@pytest.mark.parametrize("kind, change, message", [
    ("fewshot", {"methods": ("tip_adapter", "prototypes")}, r"evals.bad.methods .*unknown or no "
     r"methods \['prototypes'\]; choose among linear_probe, closed_form"),
    ("fewshot", {"shots": (0, 4)}, r"evals.bad.shots = \[0, 4\]; give positive whole numbers"),
    ("unsupervised", {"per_class": 0}, r"evals.bad.per_class = 0 is below 1"),
    ("finetune", {"train_batch_size": 30}, r"evals.bad.train_batch_size = 30 does not divide over 8"),
    ("linear_probe", {"test_split": "validation"}, r"fashion_mnist has no split 'validation'"),
])
def test_transfer_configs_fail_before_compiling(tiny_config, kind, change, message):
    from vlmjax.config.validate import validate
    from vlmjax.errors import VlmjaxError
    tiny_config.evals.bad = dict(kind=kind, **change)
    with pytest.raises(VlmjaxError, match=message):
        validate(tiny_config, 8)


def test_text_methods_are_refused_for_token_wise_models(tiny_config):
    from vlmjax.config.validate import validate
    from vlmjax.errors import ConfigError
    tiny_config.model.name = "filip"
    tiny_config.objective.name = "filip"
    tiny_config.evals.bad = dict(kind="fewshot", methods=("closed_form", "coop"))
    with pytest.raises(ConfigError, match="needs one text embedding per class, which model 'filip'"):
        validate(tiny_config, 8)
    tiny_config.evals.bad = dict(kind="fewshot", methods=("closed_form", "linear_probe"))
    validate(tiny_config, 8)
