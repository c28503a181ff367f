"""Box average precision with COCO's definitions (pycocotools), over a subset of the classes.

AP is COCO's: the mean over IoU thresholds 0.50:0.05:0.95 and over the classes of the subset
(`params.catIds`) of the 101-point interpolated precision, at most `max_dets` detections per
image, all areas; AP50 the same at IoU 0.5 alone. Classes of the subset without any
ground-truth box are left out of the mean (as COCOeval does); a subset with none is NaN.
Open-vocabulary detection reports it separately for novel, base and all classes (ViLD).
LVIS's federated variant is `evaluators.lvis_ap`.
"""

import contextlib
import io
from collections.abc import Sequence

import numpy as np

from vlmjax.errors import ConfigError


def coco_classes() -> tuple[type, type]:
    """pycocotools' (COCO, COCOeval), or a ConfigError naming how to install it."""
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as e:  # an optional dependency of box AP only
        raise ConfigError("box AP needs pycocotools; install it with "
                          "`.venv/bin/pip install pycocotools` (or the test extra)") from e
    return COCO, COCOeval


def coco_ground_truth(boxes: Sequence[np.ndarray], labels: Sequence[np.ndarray],
                      num_classes: int) -> dict:
    """COCO's dataset dict of per-image corner boxes [k, 4] (pixels) and class ids [k]."""
    images, annotations = [], []
    for image_id, (image_boxes, image_labels) in enumerate(zip(boxes, labels, strict=True)):
        images.append({"id": image_id})
        for (x0, y0, x1, y1), label in zip(np.asarray(image_boxes, np.float64).reshape(-1, 4),
                                           np.asarray(image_labels).reshape(-1), strict=True):
            w, h = x1 - x0, y1 - y0
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": int(label), "bbox": [x0, y0, w, h],
                                "area": w * h, "iscrowd": 0})
    return {"images": images, "annotations": annotations,
            "categories": [{"id": k} for k in range(num_classes)]}


def coco_results(gt: dict, detections: np.ndarray) -> tuple[object, object | None]:
    """(ground truth, detections) as pycocotools COCO objects; detections None when empty.
    `gt` is `coco_ground_truth`'s dict, detections float [N, 7]: image id, x0, y0, x1, y1
    (pixels), score, class."""
    coco_cls, _ = coco_classes()
    with contextlib.redirect_stdout(io.StringIO()):
        truth = coco_cls()
        truth.dataset = gt
        truth.createIndex()
        dets = np.asarray(detections, np.float64).reshape(-1, 7)
        # loadRes takes [image, x, y, w, h, score, class] rows.
        rows = np.concatenate([dets[:, :3], dets[:, 3:5] - dets[:, 1:3], dets[:, 5:7]], axis=1)
        results = truth.loadRes(rows) if len(rows) else None
    return truth, results


def box_ap(gt: dict, detections: np.ndarray, class_subsets: dict[str, Sequence[int]],
           max_dets: int = 100) -> dict[str, float]:
    """{"<subset>/ap", "<subset>/ap50"} per class subset, from COCO ground truth (`coco_ground_
    truth`) and detections float [N, 7]: image id, x0, y0, x1, y1 (pixels), score, class."""
    _, eval_cls = coco_classes()
    truth, results = coco_results(gt, detections)
    out = {}
    for name, classes in class_subsets.items():
        if results is None or not len(classes):
            out[f"{name}/ap"] = out[f"{name}/ap50"] = float("nan") if not len(classes) else 0.0
            continue
        evaluator = eval_cls(truth, results, iouType="bbox")
        evaluator.params.catIds = [int(k) for k in classes]
        evaluator.params.imgIds = [image["id"] for image in gt["images"]]
        evaluator.params.maxDets = [1, 10, max_dets]
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator.evaluate()
            evaluator.accumulate()
        # precision [iou, recall, class, area, max_dets]; -1 where a class has no ground truth.
        precision = evaluator.eval["precision"][:, :, :, 0, -1]
        out[f"{name}/ap"] = mean_valid(precision)
        out[f"{name}/ap50"] = mean_valid(precision[0])
    return out


def mean_valid(precision: np.ndarray) -> float:
    """The mean of the precisions that are not -1 (COCOeval's "no ground truth"); NaN if none."""
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else float("nan")
