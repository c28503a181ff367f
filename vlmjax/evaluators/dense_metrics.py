"""Semantic segmentation metrics as the protocols define them (mmsegmentation's IoUMetric).

Pixels are accumulated over the whole split into a confusion matrix (rows: true class, columns:
predicted); pixels whose label is the ignore value (255: VOC's boundaries, ADE20K's "other")
or out of range are left out. Per class, IoU = TP / (TP + FP + FN); mIoU is the mean over the
classes with a non-empty union (a class neither present nor predicted is NaN, not 0, as
mmseg's nanmean); pixel accuracy = correct / counted pixels. "Foreground only" scores the
same predictions restricted to the object classes: background pixels are ignored and the
prediction is the best object class (VOC20-style, no background decision involved).
"""

from collections.abc import Sequence

import numpy as np

IGNORE = 255


def confusion(labels: np.ndarray, predictions: np.ndarray, num_classes: int,
              ignore: int = IGNORE) -> np.ndarray:
    """int64 [C, C] counts of (true, predicted) over the pixels whose label is a class."""
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    predictions = np.asarray(predictions).reshape(-1).astype(np.int64)
    if labels.shape != predictions.shape:
        raise ValueError(f"{labels.size} labels but {predictions.size} predictions")
    keep = (labels != ignore) & (labels >= 0) & (labels < num_classes)
    if np.any(keep & ((predictions < 0) | (predictions >= num_classes))):
        raise ValueError(f"predictions outside 0..{num_classes - 1}")
    flat = labels[keep] * num_classes + predictions[keep]
    return np.bincount(flat, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def iou_per_class(matrix: np.ndarray) -> np.ndarray:
    """[C] IoU of each class, NaN where the class is neither labelled nor predicted."""
    matrix = np.asarray(matrix, np.float64)
    tp = np.diag(matrix)
    union = matrix.sum(axis=0) + matrix.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def segmentation_metrics(matrix: np.ndarray, classnames: Sequence[str], prefix: str = "",
                         per_class: bool = True) -> dict[str, float]:
    """miou, pixel_acc and (per_class) iou/<name> from a confusion matrix."""
    iou = iou_per_class(matrix)
    total = float(np.asarray(matrix).sum())
    out = {f"{prefix}miou": float(np.nanmean(iou)) if np.any(~np.isnan(iou)) else float("nan"),
           f"{prefix}pixel_acc": float(np.trace(matrix)) / total if total else float("nan")}
    if per_class:
        out.update({f"{prefix}iou/{name}": float(v) for name, v in zip(classnames, iou, strict=True)
                    if not np.isnan(v)})
    return out


def foreground_labels(labels: np.ndarray, background: int, ignore: int = IGNORE) -> np.ndarray:
    """Labels re-indexed over the object classes (background -> ignore, later classes shift
    down by one), for foreground-only scoring."""
    labels = np.asarray(labels).astype(np.int64)
    if background < 0:
        return labels
    out = np.where(labels > background, labels - 1, labels)
    return np.where((labels == background) | (labels == ignore), ignore, out)
