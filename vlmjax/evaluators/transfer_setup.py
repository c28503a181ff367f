"""What every transfer evaluator starts from: its options, frozen features of a train and a test
split, the number of classes, and (for methods that use text) the zero-shot classifier of the
same model; the checks they share."""

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from vlmjax.data.eval_sources import eval_prompts
from vlmjax.errors import ConfigError, DataError
from vlmjax.evaluators import zeroshot
from vlmjax.evaluators.context import EvalContext, EvalFacts
from vlmjax.evaluators.frozen_features import FeatureExtractor
from vlmjax.evaluators.metrics import classification_metrics
from vlmjax.evaluators.scoring import EmbeddingScoring, scoring_for
from vlmjax.evaluators.typed_options import options_from
from vlmjax.transfer import coop


@dataclasses.dataclass(frozen=True)
class TransferOptions:
    """Keys every transfer evaluator takes (each adds its own)."""

    dataset: str = "fashion_mnist"
    train_split: str = "train"
    test_split: str = "test"
    data_dir: str = ""  # "" = config.data.dir (on-disk datasets) or TFDS's default (benchmarks)
    batch_size: int = 1000  # images per feature-extraction batch
    num_images: int = 0  # use the first N images of each split only; 0 = all
    classnames_file: str = ""  # for the zero-shot classifier (methods that use text)
    templates_file: str = ""
    # CoOp's split_zhou_*.json (benchmarks): its train / val / test rows and label space, the
    # splits on which few-shot numbers are comparable across papers.
    split_file: str = ""


@dataclasses.dataclass(frozen=True)
class MethodsOptions(TransferOptions):
    """Transfer evaluators that run a list of methods, CoOp among them (few-shot, unsupervised)."""

    methods: tuple[str, ...] = ()
    max_iter: int = 1000  # L-BFGS iterations per fit (linear methods)
    coop_context_init: str = ""  # "" = random vectors (CoOp's default); e.g. "a photo of a"
    coop_num_context: int = 16
    coop_epochs: int = 0  # 0 = CoOp's schedule for the number of shots


def metrics_of(scores: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, float]:
    """acc1 / acc5 / mean_per_class_recall of class scores [n, C]."""
    k = min(5, num_classes)
    topk = np.argsort(-np.asarray(scores), axis=1, kind="stable")[:, :k]
    return classification_metrics(topk, labels, num_classes)


class TransferSetup:
    """Features of the configured splits and, when asked, the zero-shot text classifier."""

    def __init__(self, options: TransferOptions, ctx: EvalContext, needs_text: bool, why: str = ""):
        self.options, self.ctx = options, ctx
        o = options
        self.extractor = FeatureExtractor(ctx, o.batch_size, o.data_dir, o.num_images, o.split_file)
        self.num_classes = self.extractor.source(o.dataset, o.test_split).num_classes
        self.zeroshot = None
        if needs_text:
            if not isinstance(scoring_for(ctx.model), EmbeddingScoring):
                raise ConfigError(
                    f"{why} needs one text embedding per class, but model "
                    f"{ctx.model.name!r} scores token-wise (FILIP); use the linear "
                    "probe or the closed-form few-shot classifier on its features")
            self.zeroshot = zeroshot.ZeroShotClassification(zeroshot.Options(
                dataset=o.dataset, split=o.test_split, data_dir=o.data_dir,
                batch_size=o.batch_size, num_images=o.num_images,
                classnames_file=o.classnames_file, templates_file=o.templates_file,
                split_file=o.split_file), ctx)

    def source(self, which: str) -> Any:
        """The EvalSource of the train, test (or another named) split."""
        return self.extractor.source(self.options.dataset, getattr(self.options, f"{which}_split"))

    def split(self, params: Any, which: str) -> tuple[np.ndarray, np.ndarray]:
        """(features, labels) of the train or test split (or val, where the options have one)."""
        o = self.options
        features, labels = self.extractor.features(params, o.dataset, getattr(o, f"{which}_split"))
        if len(labels) and labels.max() >= self.num_classes:
            raise DataError(f"{o.dataset} {which} labels reach {labels.max()}, beyond "
                            f"its {self.num_classes} classes")
        return features, labels

    def text_classifier(self, params: Any) -> np.ndarray:
        """[C, e] zero-shot class embeddings (prompt ensemble, renormalised)."""
        return np.asarray(self.zeroshot.classifier(params), np.float32)


class MethodsEvaluator:
    """Shared set-up of evaluators that run a list of methods (few-shot, unsupervised): the
    method check, the features and text classifier, and CoOp's prompts when CoOp is asked for
    (built here, so that a context too long for the text tower fails before anything runs)."""

    KIND = ""
    OPTIONS: type[MethodsOptions] = MethodsOptions
    METHODS: tuple[str, ...] = ()
    TEXT_METHODS: tuple[str, ...] = ()

    def __init__(self, options: MethodsOptions | Mapping, ctx: EvalContext):
        self.options = o = options_from(self.OPTIONS, options)
        unknown = sorted(set(o.methods) - set(self.METHODS))
        if unknown:
            raise ConfigError(f"evals {self.KIND}: unknown methods {unknown}; choose from "
                              f"{', '.join(self.METHODS)}")
        self.ctx = ctx
        self.name = f"{self.KIND}/{o.dataset}"
        text_methods = sorted(set(o.methods) & set(self.TEXT_METHODS))
        self.setup = TransferSetup(o, ctx, needs_text=bool(text_methods),
                                   why=f"{self.KIND} " + "/".join(text_methods))
        self.prompts = None
        if "coop" in o.methods:
            context = o.coop_context_init or " ".join([coop.PLACEHOLDER] * o.coop_num_context)
            self.prompts = coop.class_prompts(ctx.tokenizer, self.setup.zeroshot.classnames, context,
                                              ctx.context_length)

    def coop_trainer(self, params: Any) -> coop.CoopTrainer:
        """A CoOp trainer of context vectors for the frozen `params`."""
        return coop.CoopTrainer(self.ctx.graphdef, params, self.prompts, coop.CoopOptions(
            context_init=self.options.coop_context_init, epochs=self.options.coop_epochs))


def fail_option(name: str, key: str, problem: str, fix: str) -> None:
    """ConfigError("config.evals.<name>.<key> <problem>; <fix>")."""
    raise ConfigError(f"config.evals.{name}.{key} {problem}; {fix}")


def require_at_least_one(name: str, options: Any, *keys: str) -> None:
    """Each of the options `keys` is >= 1."""
    for key in keys:
        if getattr(options, key) < 1:
            fail_option(name, key, f"= {getattr(options, key)} is below 1", "use a positive number")


def check_transfer(name: str, kind: str, options: TransferOptions, facts: EvalFacts, *,
                   needs_text: bool, val_split: str = "") -> None:
    """Raises ConfigError / DataError before anything compiles if a transfer evaluator cannot
    read its splits, or needs the zero-shot text classifier (`needs_text`) of a model without
    one text embedding per class or without complete class names."""
    o = options
    for split in (o.train_split, o.test_split, val_split):
        if split:
            facts.check_source(name, o.dataset, split, o.data_dir, o.split_file)
    if needs_text and "embedding" not in facts.capabilities:
        methods = f" (methods {list(o.methods)})" if isinstance(o, MethodsOptions) else ""
        fail_option(name, "kind", f"= {kind!r}{methods} needs one text embedding per class, which "
              f"model {facts.model_name!r} (token-wise scoring) has not",
              "use the linear_probe kind or the few-shot methods linear_probe / closed_form")
    if needs_text:
        eval_prompts(o.dataset, o.classnames_file, o.templates_file, o.split_file)


def check_methods(name: str, kind: str, options: MethodsOptions, facts: EvalFacts,
                  methods: tuple[str, ...], text_methods: tuple[str, ...]) -> None:
    """The splits readable, known methods, positive L-BFGS budget and CoOp sizes, and text
    where a chosen method (among `text_methods`) needs it."""
    o = options
    unknown = sorted(set(o.methods) - set(methods))
    if unknown or not o.methods:
        fail_option(name, "methods", f"= {list(o.methods)} has unknown or no methods {unknown}",
              f"choose among {', '.join(methods)}")
    require_at_least_one(name, o, "max_iter", "coop_num_context")
    check_transfer(name, kind, o, facts, needs_text=bool(set(o.methods) & set(text_methods)))
