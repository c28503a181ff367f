"""What every transfer evaluator starts from: frozen features of a train and a test split, the
number of classes, and (for methods that use text) the zero-shot classifier of the same model."""

from collections.abc import Mapping
from typing import Any

import numpy as np

from vlmjax.data import benchmarks, datasets
from vlmjax.errors import ConfigError, DataError
from vlmjax.evaluators.context import EvalContext, EvalFacts
from vlmjax.evaluators.frozen_features import FeatureExtractor
from vlmjax.evaluators.metrics import classification_metrics
from vlmjax.evaluators.scoring import EmbeddingScoring, scoring_for

# Keys every transfer evaluator takes (each adds its own).
COMMON = {
    "dataset": "fashion_mnist",
    "train_split": "train",
    "test_split": "test",
    "data_dir": "",  # "" = config.data.dir (on-disk datasets) or TFDS's default (benchmarks)
    "batch_size": 1000,  # images per feature-extraction batch
    "num_images": 0,  # use the first N images of each split only; 0 = all
    "classnames_file": "",  # for the zero-shot classifier (methods that use text)
    "templates_file": "",
    # CoOp's split_zhou_*.json (benchmarks): its train / val / test rows and label space, the
    # splits on which few-shot numbers are comparable across papers.
    "split_file": "",
}


def class_count(dataset: str, split_file: str = "") -> int:
    """Number of classes of an on-disk dataset, a registered benchmark or a CoOp split file
    (whose label space may differ from the dataset's); no user class names needed."""
    if dataset in datasets.DATASETS:
        return len(datasets.dataset_prompts(dataset)[0])
    benchmark = benchmarks.get_benchmark(dataset)
    if split_file:
        from vlmjax.data.coop_splits import coop_classnames
        return len(coop_classnames(benchmark, split_file))
    return benchmarks.num_classes(benchmark)


def metrics_of(scores: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, float]:
    """acc1 / acc5 / mean_per_class_recall of class scores [n, C]."""
    k = min(5, num_classes)
    topk = np.argsort(-np.asarray(scores), axis=1, kind="stable")[:, :k]
    return classification_metrics(topk, labels, num_classes)


class MethodsEvaluator:
    """Shared set-up of evaluators that run a list of methods (few-shot, unsupervised): the
    method check, the features and text classifier, and CoOp's prompts when CoOp is asked for
    (built here, so that a context too long for the text tower fails before anything runs)."""

    DEFAULTS: Mapping = {}
    METHODS: tuple[str, ...] = ()
    TEXT_METHODS: tuple[str, ...] = ()

    def __init__(self, cfg: Mapping, ctx: EvalContext):
        from vlmjax.transfer import coop
        self.cfg = cfg = {**self.DEFAULTS, **cfg}
        unknown = sorted(set(cfg["methods"]) - set(self.METHODS))
        if unknown:
            raise ConfigError(f"evals {cfg['kind']}: unknown methods {unknown}; choose from "
                              f"{', '.join(self.METHODS)}")
        self.ctx = ctx
        self.name = f"{cfg['kind']}/{cfg['dataset']}"
        text_methods = sorted(set(cfg["methods"]) & set(self.TEXT_METHODS))
        self.setup = TransferSetup(cfg, ctx, needs_text=bool(text_methods),
                                   why=f"{cfg['kind']} " + "/".join(text_methods))
        self.prompts = None
        if "coop" in cfg["methods"]:
            context = cfg["coop_context_init"] or " ".join([coop.PLACEHOLDER] * cfg["coop_num_context"])
            self.prompts = coop.class_prompts(ctx.tokenizer, self.setup.zeroshot.classnames, context,
                                              ctx.context_length)

    def coop_trainer(self, params: Any) -> Any:
        """A CoOp trainer of context vectors for the frozen `params`."""
        from vlmjax.transfer import coop
        return coop.CoopTrainer(self.ctx.graphdef, params, self.prompts,
                                {"context_init": self.cfg["coop_context_init"],
                                 "epochs": self.cfg["coop_epochs"]})


class TransferSetup:
    """Features of the configured splits and, when asked, the zero-shot text classifier."""

    def __init__(self, cfg: Mapping, ctx: EvalContext, needs_text: bool, why: str = ""):
        self.cfg, self.ctx = cfg, ctx
        self.extractor = FeatureExtractor(ctx, cfg["batch_size"], cfg["data_dir"], cfg["num_images"],
                                          cfg["split_file"])
        self.num_classes = class_count(cfg["dataset"], cfg["split_file"])
        self.zeroshot = None
        if needs_text:
            if not isinstance(scoring_for(ctx.model), EmbeddingScoring):
                raise ConfigError(
                    f"{why} needs one text embedding per class, but model "
                    f"{ctx.model.name!r} scores token-wise (FILIP); use the linear "
                    "probe or the closed-form few-shot classifier on its features")
            from vlmjax.evaluators.zeroshot import ZeroShotClassification
            self.zeroshot = ZeroShotClassification(
                {k: cfg[k] for k in ("dataset", "data_dir", "batch_size", "num_images",
                                     "classnames_file", "templates_file", "split_file")}
                | {"split": cfg["test_split"]}, ctx)

    def split(self, params: Any, which: str) -> tuple[np.ndarray, np.ndarray]:
        """(features, labels) of the train or test split."""
        features, labels = self.extractor.features(params, self.cfg["dataset"],
                                                   self.cfg[f"{which}_split"])
        if len(labels) and labels.max() >= self.num_classes:
            raise DataError(f"{self.cfg['dataset']} {which} labels reach {labels.max()}, beyond "
                            f"its {self.num_classes} classes")
        return features, labels

    def text_classifier(self, params: Any) -> np.ndarray:
        """[C, e] zero-shot class embeddings (prompt ensemble, renormalised)."""
        return np.asarray(self.zeroshot.classifier(params), np.float32)


def check_transfer_config(name: str, full: Mapping, facts: EvalFacts, *,
                          methods: tuple[str, ...] = (), text_methods: tuple[str, ...] = (),
                          always_text: bool = False) -> None:
    """Raises ConfigError / DataError before anything compiles if a transfer evaluator's config
    cannot run: unreadable splits, missing class names, bad method lists or sizes. `methods`:
    the evaluator's methods (empty: it has none); `text_methods` of them, or every run when
    `always_text`, need the zero-shot text classifier."""
    from vlmjax.data.eval_sources import check_eval_dataset, eval_prompts

    def fail(key: str, problem: str, fix: str) -> None:
        raise ConfigError(f"config.evals.{name}.{key} {problem}; {fix}")

    on_disk = full["dataset"] in datasets.DATASETS
    data_dir = full["data_dir"] or (facts.data_dir if on_disk else "")
    key = f"evals.{name}.data_dir" if full["data_dir"] else "data.dir"
    for split_key in ("train_split", "test_split", "val_split"):
        if full.get(split_key):
            check_eval_dataset(full["dataset"], full[split_key], data_dir, key, full["split_file"])
    chosen = tuple(full.get("methods", ()))
    unknown = sorted(set(chosen) - set(methods))
    if unknown or (methods and not chosen):
        fail("methods", f"= {list(chosen)} has unknown or no methods {unknown}",
             f"choose among {', '.join(methods)}")
    shots = tuple(full.get("shots", (1,)))
    if not shots or any(not isinstance(k, int) or k < 1 for k in shots):
        fail("shots", f"= {list(shots)}",
             "give positive whole numbers of images per class, e.g. (1, 2, 4, 8, 16)")
    for count in ("seeds", "per_class", "max_iter"):
        if count in full and full[count] < 1:
            fail(count, f"= {full[count]} is below 1", "use a positive number")
    if full.get("train_batch_size", facts.batch_shards) % facts.batch_shards:
        fail("train_batch_size", f"= {full['train_batch_size']} does not divide over "
             f"{facts.batch_shards} batch shards", f"use a multiple of {facts.batch_shards}")
    needs_text = always_text or bool(set(chosen) & set(text_methods))
    if needs_text and "embedding" not in facts.capabilities:
        fail("kind", f"= {full['kind']!r} (methods {list(chosen)}) needs one text embedding per "
             f"class, which model {facts.model_name!r} (token-wise scoring) has not",
             "use the linear_probe kind or the few-shot methods linear_probe / closed_form")
    if needs_text:
        eval_prompts(full["dataset"], full["classnames_file"], full["templates_file"], full["split_file"])
