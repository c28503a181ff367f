"""Classification metrics with CLIP_benchmark's names: acc1, acc5, mean_per_class_recall."""

import numpy as np


def classification_metrics(topk: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, float]:
    """From top-k predicted classes [N, k>=1] (best first) and true labels [N].

    acc5 is reported only with at least 5 classes and k >= 5 (it is undefined below 5 classes);
    mean_per_class_recall is the balanced accuracy over classes present in `labels`.
    """
    topk = np.asarray(topk)
    labels = np.asarray(labels)
    correct1 = topk[:, 0] == labels
    out = {"acc1": float(correct1.mean())}
    if num_classes >= 5 and topk.shape[1] >= 5:
        out["acc5"] = float((topk[:, :5] == labels[:, None]).any(axis=1).mean())
    recalls = [correct1[labels == c].mean() for c in range(num_classes) if np.any(labels == c)]
    out["mean_per_class_recall"] = float(np.mean(recalls))
    return out
