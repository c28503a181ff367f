"""LVIS's federated box AP (Gupta et al. 2019): AP, AP50 and APr / APc / APf.

LVIS does not annotate every class on every image. For class c, AP is taken over the images
where c is positive (has boxes) or verified absent (the image's negative classes) only: a
detection of c on any other image is not counted at all. On an image where c's annotation is
not exhaustive, a detection of c that matches no box is ignored (a matched one is a true
positive). Otherwise COCO's definitions (`evaluators.box_ap`): IoU 0.50:0.05:0.95, 101-point
interpolated precision, all areas, at most `max_dets` (LVIS: 300) detections per image, the
best-scored ones over all classes. AP is the mean over the classes of a subset with at least one
box in the evaluated images; APr / APc / APf the same over its rare / common / frequent classes
(NaN for a group without any, and for all three where frequencies are unknown).
Implemented on pycocotools' matching (COCOeval.evaluateImg) and accumulation, with per-class
image sets and ignore flags; only the (image, class) pairs that hold a box or a counted
detection are matched, so LVIS's 1203 classes x 20k images stay tractable.
"""

import contextlib
import copy
import dataclasses
import io
from collections.abc import Sequence

import numpy as np

from vlmjax.errors import DataError
from vlmjax.evaluators.box_ap import coco_classes, coco_results, mean_valid

FREQUENCIES = ("r", "c", "f")  # rare (1-10 training images), common (11-100), frequent (>100)
ALL_AREAS = [0.0, 1e5 ** 2]  # COCO's "all" area range


@dataclasses.dataclass(frozen=True)
class Federation:
    """LVIS's annotations beyond the boxes, in `coco_ground_truth`'s image and class ids."""

    negative: Sequence[np.ndarray]  # per image: the classes verified absent
    not_exhaustive: Sequence[np.ndarray]  # per image: classes whose boxes may be incomplete
    frequency: Sequence[str]  # per class: "r", "c", "f" or "" (unknown)


def top_per_image(detections: np.ndarray, max_dets: int) -> np.ndarray:
    """The `max_dets` best-scored rows of each image (column 0) of float [N, 7] detections."""
    dets = np.asarray(detections, np.float64).reshape(-1, 7)
    order = np.lexsort((-dets[:, 5], dets[:, 0]))  # by image, then score descending
    dets = dets[order]
    starts = np.searchsorted(dets[:, 0], dets[:, 0], side="left")
    return dets[np.arange(len(dets)) - starts < max_dets]


def _pairs(federation: Federation, num_images: int, num_classes: int, key: str
           ) -> set[tuple[int, int]]:
    lists = getattr(federation, key)
    if len(lists) != num_images:
        raise DataError(f"LVIS federation: {len(lists)} {key} lists for {num_images} images")
    pairs = set()
    for image, classes in enumerate(lists):
        classes = np.asarray(classes, np.int64).reshape(-1)
        if np.any((classes < 0) | (classes >= num_classes)):
            raise DataError(f"LVIS federation: image {image} lists a {key} class outside "
                            f"0..{num_classes - 1}")
        pairs.update((image, int(c)) for c in classes)
    return pairs


def federated_precision(gt: dict, detections: np.ndarray, federation: Federation,
                        max_dets: int = 300) -> np.ndarray:
    """COCOeval's precision [iou, recall, class] (-1 for classes without a box in their
    evaluated images) under LVIS's federated rules (module doc). `gt` is `coco_ground_truth`'s
    dict with image ids 0..n-1 and class ids 0..K-1; detections float [N, 7] as in box_ap."""
    coco_cls, eval_cls = coco_classes()
    image_ids = [image["id"] for image in gt["images"]]
    if image_ids != list(range(len(image_ids))):
        raise DataError("lvis_box_ap takes coco_ground_truth's image ids 0..n-1 in order")
    num_classes = len(gt["categories"])
    negative = _pairs(federation, len(image_ids), num_classes, "negative")
    not_exhaustive = _pairs(federation, len(image_ids), num_classes, "not_exhaustive")
    dets = top_per_image(detections, max_dets)
    truth, results = coco_results(gt, dets)
    if results is None:  # nothing detected: an empty result set scores 0 where there are boxes
        results = coco_cls()
        results.dataset = {**gt, "annotations": []}
        with contextlib.redirect_stdout(io.StringIO()):
            results.createIndex()
    evaluator = eval_cls(truth, results, iouType="bbox")
    p = evaluator.params
    p.imgIds, p.catIds = image_ids, list(range(num_classes))
    p.areaRng, p.areaRngLbl, p.maxDets = [ALL_AREAS], ["all"], [max_dets]
    evaluator._prepare()  # pycocotools' own grouping of boxes and detections by (image, class)
    positive = set(evaluator._gts)
    # A class is evaluated on its positive and negative images only.
    pairs = sorted(positive | (set(evaluator._dts) & negative))
    evaluator.ious = {pair: evaluator.computeIoU(*pair) for pair in pairs}
    num_images = len(image_ids)
    evaluator.evalImgs = [None] * (num_classes * num_images)  # [class, area, image], one area
    for image, k in pairs:
        entry = evaluator.evaluateImg(image, k, ALL_AREAS, max_dets)
        if entry is not None and (image, k) in not_exhaustive:
            entry["dtIgnore"] = np.logical_or(entry["dtIgnore"], entry["dtMatches"] == 0)
        evaluator.evalImgs[k * num_images + image] = entry
    evaluator._paramsEval = copy.deepcopy(p)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.accumulate()
    return evaluator.eval["precision"][:, :, :, 0, 0]


def lvis_box_ap(gt: dict, detections: np.ndarray, federation: Federation,
                class_subsets: dict[str, Sequence[int]], max_dets: int = 300
                ) -> dict[str, float]:
    """{"<subset>/ap", "/ap50", "/apr", "/apc", "/apf"} per class subset (module doc)."""
    if len(federation.frequency) != len(gt["categories"]):
        raise DataError(f"LVIS federation: {len(federation.frequency)} class frequencies for "
                        f"{len(gt['categories'])} classes")
    precision = federated_precision(gt, detections, federation, max_dets)
    frequency = np.asarray(list(federation.frequency), dtype=object)
    out = {}
    for name, classes in class_subsets.items():
        classes = np.asarray(classes, np.int64).reshape(-1)
        out[f"{name}/ap"] = mean_valid(precision[:, :, classes])
        out[f"{name}/ap50"] = mean_valid(precision[0, :, classes])
        for group in FREQUENCIES:
            members = classes[frequency[classes] == group] if classes.size else classes
            out[f"{name}/ap{group}"] = mean_valid(precision[:, :, members])
    return out
