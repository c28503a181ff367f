"""What every transfer evaluator starts from: frozen features of a train and a test split, the
number of classes, and (for methods that use text) the zero-shot classifier of the same model."""

from collections.abc import Mapping
from typing import Any

import numpy as np

from vlmjax.data import benchmarks, datasets
from vlmjax.errors import ConfigError, DataError
from vlmjax.evaluators.context import EvalContext
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
}


def class_count(dataset: str) -> int:
    """Number of classes of an on-disk dataset or registered benchmark (no class names needed)."""
    if dataset in datasets.DATASETS:
        return len(datasets.dataset_prompts(dataset)[0])
    return benchmarks.num_classes(benchmarks.get_benchmark(dataset))


def metrics_of(scores: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, float]:
    """acc1 / acc5 / mean_per_class_recall of class scores [n, C]."""
    k = min(5, num_classes)
    topk = np.argsort(-np.asarray(scores), axis=1, kind="stable")[:, :k]
    return classification_metrics(topk, labels, num_classes)


class TransferSetup:
    """Features of the configured splits and, when asked, the zero-shot text classifier."""

    def __init__(self, cfg: Mapping, ctx: EvalContext, needs_text: bool, why: str = ""):
        self.cfg, self.ctx = cfg, ctx
        self.extractor = FeatureExtractor(ctx, cfg["batch_size"], cfg["data_dir"], cfg["num_images"])
        self.num_classes = class_count(cfg["dataset"])
        self.zeroshot = None
        if needs_text:
            if not isinstance(scoring_for(ctx.config), EmbeddingScoring):
                raise ConfigError(
                    f"{why} needs one text embedding per class, but model "
                    f"{ctx.config['model']['name']!r} scores token-wise (FILIP); use the linear "
                    "probe or the closed-form few-shot classifier on its features")
            from vlmjax.evaluators.zeroshot import ZeroShotClassification
            self.zeroshot = ZeroShotClassification(
                {k: cfg[k] for k in ("dataset", "data_dir", "batch_size", "num_images",
                                     "classnames_file", "templates_file")}
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
