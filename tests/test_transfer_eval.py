"""Transfer evaluators end to end on a trained tiny CLIP checkpoint: linear probe (against
scikit-learn on the same cached features), few-shot methods, unsupervised transfer and
fine-tuning (whose step-0 head is the zero-shot classifier), through `vlmjax.evaluate`."""

import glob
import os
import shutil

import ml_collections
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from vlmjax.evaluate import evaluate
from vlmjax.evaluators import frozen_features
from vlmjax.transfer.shots import carve_validation


def _suite(config) -> ml_collections.ConfigDict:
    suite = ml_collections.ConfigDict(config.to_dict())
    suite.evals = ml_collections.ConfigDict(dict(
        zeroshot=dict(kind="zeroshot", batch_size=200),
        # Few L-BFGS iterations: tests compile at -O0, where each one is slow.
        linear_probe=dict(kind="linear_probe", batch_size=200, max_iter=60),
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


def test_linear_probe_matches_scikit_learn_on_the_cached_features(transfer_results):
    _, workdir, evals = transfer_results
    probe = evals["linear_probe/fashion_mnist"]
    cached = sorted(glob.glob(os.path.join(workdir, "cache", "features", "fashion_mnist_*_step_40_*.npz")))
    assert len(cached) == 2  # train and test, keyed by checkpoint and preprocessing
    data = {os.path.basename(p).split("_")[2]: np.load(p) for p in cached}
    x, y = data["train"]["features"], data["train"]["labels"]
    tx, ty = data["test"]["features"], data["test"]["labels"]
    assert x.shape == (640, 16) and tx.shape == (200, 16)
    keep, held = carve_validation(len(y), 0.2)
    reference = LogisticRegression(C=probe["C"], max_iter=5000).fit(
        np.concatenate([x[keep], x[held]]), np.concatenate([y[keep], y[held]]))
    assert abs(probe["acc1"] - reference.score(tx, ty)) <= 0.0051  # one image of 200
    assert probe["acc1"] > 0.5  # chance is 0.1


def test_fewshot_and_unsupervised_report_every_method_and_shot(transfer_results):
    _, _, evals = transfer_results
    fewshot = evals["fewshot/fashion_mnist"]
    for method in ("linear_probe", "closed_form", "tip_adapter", "tip_adapter_f", "coop"):
        for k in (1, 4):
            assert 0.0 <= fewshot[f"{method}/{k}shot/acc1"] <= 1.0
            assert fewshot[f"{method}/{k}shot/acc1_std"] >= 0.0
    unsupervised = evals["unsupervised/fashion_mnist"]
    zeroshot = evals["zeroshot/fashion_mnist"]["acc1"]
    assert unsupervised["zeroshot/acc1"] == pytest.approx(zeroshot, abs=1e-6)
    assert unsupervised["pseudo_labelled"] <= 40
    for method in ("linear", "coop"):
        assert unsupervised[f"{method}/gain"] == pytest.approx(unsupervised[f"{method}/acc1"] - zeroshot)


def test_finetune_head_starts_as_the_zero_shot_classifier(transfer_results):
    _, _, evals = transfer_results
    finetune = evals["finetune/fashion_mnist"]
    assert finetune["zeroshot_head/acc1"] == pytest.approx(evals["zeroshot/fashion_mnist"]["acc1"])
    assert finetune["acc1"] == finetune["zeroshot_head/acc1"]  # zero steps


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
