"""LVIS's federated box AP (`evaluators.lvis_ap`) against hand-computed cases: which images
count for a class, not-exhaustive classes, the frequency groups, and agreement with COCO's AP
(pycocotools through `box_ap`) where nothing is federated."""

import numpy as np
import pytest

from vlmjax.evaluators.box_ap import box_ap, coco_ground_truth
from vlmjax.evaluators.lvis_ap import Federation, lvis_box_ap, top_per_image

pytest.importorskip("pycocotools")

NONE = np.zeros(0, np.int64)
BOX = [0, 0, 10, 10]
FAR = [50, 50, 60, 60]  # IoU 0 with BOX
HALF = 0.5  # one FP ranked above one TP over one box: precision 1/2 at every recall point


def _gt(labels_per_image, num_classes):
    """Every listed label is one box at BOX on its image."""
    boxes = [np.array([BOX] * len(labels), np.float64).reshape(-1, 4)
             for labels in labels_per_image]
    return coco_ground_truth(boxes, [np.asarray(labels, np.int64) for labels in labels_per_image],
                             num_classes)


def _fed(negative, not_exhaustive=None, frequency=None, num_classes=3):
    not_exhaustive = not_exhaustive or [NONE] * len(negative)
    return Federation([np.asarray(n, np.int64) for n in negative],
                      [np.asarray(n, np.int64) for n in not_exhaustive],
                      frequency or ["f"] * num_classes)


def test_a_detection_counts_on_negative_images_only():
    # Image 0: one class-0 box; image 1: nothing of class 0 annotated.
    gt = _gt([[0], []], 3)
    dets = np.array([[0, *BOX, 0.5, 0],    # TP
                     [1, *FAR, 0.9, 0]])   # higher-scored, on image 1
    # Image 1 neither positive nor negative for class 0: its detection is not counted: AP 1.
    got = lvis_box_ap(gt, dets, _fed([[], []]), {"all": [0]})
    assert got["all/ap"] == pytest.approx(1.0) and got["all/ap50"] == pytest.approx(1.0)
    # Image 1 negative for class 0: the detection is a FP ranked first: precision 1/2 at every
    # recall point (the TP comes second, at recall 1).
    got = lvis_box_ap(gt, dets, _fed([[], [0]]), {"all": [0]})
    assert got["all/ap"] == pytest.approx(HALF) and got["all/ap50"] == pytest.approx(HALF)
    # Plain COCO AP counts it always (every image is exhaustive there).
    assert box_ap(gt, dets, {"all": [0]})["all/ap"] == pytest.approx(HALF)


def test_unmatched_detections_on_not_exhaustive_images_are_ignored_matched_ones_count():
    # Image 0: one class-1 box, class 1 not exhaustive there; image 1: one class-1 box.
    gt = _gt([[1], [1]], 3)
    dets = np.array([[0, *FAR, 0.9, 1],    # unmatched on the not-exhaustive image: ignored
                     [0, *BOX, 0.8, 1],    # matched there: TP
                     [1, *FAR, 0.7, 1],    # unmatched on an exhaustive image: FP
                     [1, *BOX, 0.6, 1]])   # TP
    # Ranked (ignored), TP, FP, TP over 2 boxes: precision 1 up to recall 1/2 (51 of COCO's
    # 101 recall points) and 2/3 above (50 points).
    expected = (51 * 1.0 + 50 * 2 / 3) / 101
    got = lvis_box_ap(gt, dets, _fed([[], []], [[1], []]), {"all": [1]})
    assert got["all/ap"] == pytest.approx(expected)
    # Exhaustive everywhere: FP, TP, FP, TP: precision 1/2 at recall 1/2 and (after the
    # interpolation) 1/2 above: AP 1/2.
    got = lvis_box_ap(gt, dets, _fed([[], []]), {"all": [1]})
    assert got["all/ap"] == pytest.approx(0.5)
    # Not exhaustive on image 1 as well: TP, TP (both unmatched ones ignored): AP 1.
    got = lvis_box_ap(gt, dets, _fed([[], []], [[1], [1]]), {"all": [1]})
    assert got["all/ap"] == pytest.approx(1.0)


def test_a_match_below_some_iou_thresholds_is_ignored_there_on_not_exhaustive_images():
    # A detection of IoU 0.68 with the only box: TP at 0.50..0.65 (4 thresholds). Exhaustive,
    # it is a FP at 0.70..0.95 (AP 0 there); not exhaustive, it is ignored there (also AP 0:
    # no TP at all), so both give 4/10 of AP 1: the ignore flag does not create recall.
    gt = _gt([[0]], 1)
    dets = np.array([[0, 0, 0, 10, 10 / 0.68, 0.9, 0]])
    for not_exhaustive in ([[]], [[0]]):
        got = lvis_box_ap(gt, dets, _fed([[]], not_exhaustive, ["r"], 1), {"all": [0]})
        assert got["all/ap50"] == pytest.approx(1.0)
        assert got["all/ap"] == pytest.approx(0.4)


def test_frequency_groups_and_classes_without_boxes():
    # Classes 0 (rare), 1 (common), 2 (frequent), 3 (rare, no box anywhere), 4 (unknown).
    gt = _gt([[0, 1, 2, 4], []], 5)
    dets = np.array([[0, *BOX, 0.9, 0],              # class 0: TP -> AP 1
                     [1, *FAR, 0.9, 1], [0, *BOX, 0.8, 1],  # class 1: FP, TP -> AP 1/2
                     [1, *FAR, 0.9, 2], [1, *FAR, 0.8, 2], [0, *BOX, 0.7, 2],  # 1/3
                     [1, *FAR, 0.9, 3],              # class 3: no box: left out
                     [0, *BOX, 0.9, 4]])             # class 4: AP 1
    fed = Federation([NONE, np.arange(5)], [NONE, NONE], ["r", "c", "f", "r", ""])
    got = lvis_box_ap(gt, dets, fed, {"all": range(5), "rare": [0, 3], "none": [3],
                                      "empty": []})
    assert got["all/ap"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1) / 4)
    assert got["all/apr"] == pytest.approx(1.0)  # class 3 has no box: only class 0
    assert got["all/apc"] == pytest.approx(1 / 2)
    assert got["all/apf"] == pytest.approx(1 / 3)
    assert got["rare/ap"] == pytest.approx(1.0) and got["rare/apr"] == pytest.approx(1.0)
    assert np.isnan(got["rare/apc"]) and np.isnan(got["rare/apf"])  # groups without classes
    for key in ("ap", "ap50", "apr", "apc", "apf"):
        assert np.isnan(got[f"none/{key}"]) and np.isnan(got[f"empty/{key}"])
    # Frequencies unknown (an older annotation file): AP as before, every group NaN.
    unknown = lvis_box_ap(gt, dets, Federation(fed.negative, fed.not_exhaustive, [""] * 5),
                          {"all": range(5)})
    assert unknown["all/ap"] == pytest.approx(got["all/ap"])
    assert all(np.isnan(unknown[f"all/ap{g}"]) for g in "rcf")
    # Nothing detected: 0 where there are boxes, NaN where there are none.
    got = lvis_box_ap(gt, np.zeros((0, 7)), fed, {"all": range(5), "none": [3]})
    assert got["all/ap"] == 0.0 and got["all/apr"] == 0.0 and np.isnan(got["none/ap"])


def test_at_most_max_dets_per_image_over_all_classes():
    dets = np.array([[1, *BOX, 0.1, 0], [0, *BOX, 0.2, 0], [0, *BOX, 0.9, 1],
                     [0, *BOX, 0.5, 2], [1, *BOX, 0.3, 2]])
    kept = top_per_image(dets, 2)
    np.testing.assert_array_equal(kept[:, [0, 5]], [[0, 0.9], [0, 0.5], [1, 0.3], [1, 0.1]])
    # With one detection per image the lower-scored TP of class 0 on image 0 is dropped
    # (class 1's detection scores higher there), so class 0 only finds image 1's box.
    gt = _gt([[0], [0]], 3)
    dets = np.array([[0, *BOX, 0.5, 0], [0, *FAR, 0.9, 1], [1, *BOX, 0.5, 0]])
    got = lvis_box_ap(gt, dets, _fed([[1, 2], [1, 2]]), {"zero": [0]}, max_dets=1)
    assert got["zero/ap"] == pytest.approx(51 / 101)  # recall 1/2 at precision 1


def _random_case(seed, num_images=40, num_classes=7):
    rng = np.random.default_rng(seed)
    boxes, labels, dets = [], [], []
    for image in range(num_images):
        k = rng.integers(0, 4)
        corner = rng.uniform(0, 60, (k, 2))
        b = np.concatenate([corner, corner + rng.uniform(4, 40, (k, 2))], axis=1)
        lab = rng.integers(0, num_classes - 1, k)  # the last class never has a box
        boxes.append(b)
        labels.append(lab)
        for box, label in zip(b, lab, strict=True):
            for _ in range(rng.integers(0, 3)):  # near-hits of the right or a wrong class
                cls = label if rng.uniform() < 0.8 else rng.integers(0, num_classes)
                dets.append([image, *(box + rng.normal(0, 1.5, 4)), rng.uniform(), cls])
        for _ in range(rng.integers(0, 4)):  # false positives anywhere
            corner = rng.uniform(0, 60, 2)
            dets.append([image, *corner, *(corner + rng.uniform(4, 40, 2)), rng.uniform(),
                         rng.integers(0, num_classes)])
    return boxes, labels, np.array(dets)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_without_federation_it_is_cocos_ap(seed):
    """Every image negative for every class it has no box of, nothing not exhaustive, at most
    100 detections per image: LVIS's AP is pycocotools' COCO AP (at maxDets 100)."""
    num_classes = 7
    boxes, labels, dets = _random_case(seed, num_classes=num_classes)
    gt = coco_ground_truth(boxes, labels, num_classes)
    negative = [np.setdiff1d(np.arange(num_classes), lab) for lab in labels]
    fed = Federation(negative, [NONE] * len(labels), ["r", "c", "f", "r", "c", "f", "r"])
    subsets = {"all": range(num_classes), "some": [0, 2, 5], "none": [6]}
    coco = box_ap(gt, dets, {k: list(v) for k, v in subsets.items()}, max_dets=100)
    lvis = lvis_box_ap(gt, dets, fed, subsets, max_dets=100)
    assert 0.05 < coco["all/ap"] < 0.95  # a case with both hits and misses
    for key, value in coco.items():
        np.testing.assert_allclose(lvis[key], value, rtol=1e-12, err_msg=key)
    # The groups are the means over their classes of the per-class COCO AP.
    per_class = {k: box_ap(gt, dets, {"c": [k]})["c/ap"] for k in range(num_classes - 1)}
    rare = [per_class[k] for k in (0, 3)]  # class 6 (rare) has no box
    assert lvis["all/apr"] == pytest.approx(np.mean(rare), rel=1e-12)
    assert lvis["all/apc"] == pytest.approx(np.mean([per_class[1], per_class[4]]), rel=1e-12)
    assert lvis["some/apf"] == pytest.approx(np.mean([per_class[2], per_class[5]]), rel=1e-12)
    assert lvis["some/apr"] == pytest.approx(per_class[0], rel=1e-12)
