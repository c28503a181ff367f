"""Open-vocabulary detection (issue 22, item 3): the jittable Hungarian matcher against SciPy,
the matching cost and every loss against NumPy, box AP against a hand-computed case, the
base / novel split of the detection source, the teacher-target cache keys, a tiny end-to-end
run and the one-line errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from vlmjax.objectives import ov_detection as objective
from vlmjax.objectives.hungarian import hungarian_match

# ---------------------------------------------------------------------------- the matcher


@pytest.mark.parametrize("shape", [(1, 1), (1, 6), (3, 3), (4, 16), (4, 49), (6, 7)])
def test_hungarian_matches_scipy_on_random_and_tied_costs(shape):
    rng = np.random.default_rng(sum(shape))
    match = jax.jit(hungarian_match)
    for trial in range(8):
        cost = (rng.normal(size=shape) if trial % 2 else rng.integers(0, 3, size=shape)
                ).astype(np.float32)  # integers: many ties, several optimal assignments
        columns = np.asarray(match(cost))
        assert len(set(columns.tolist())) == shape[0] and columns.min() >= 0
        rows, want = linear_sum_assignment(cost)
        np.testing.assert_allclose(cost[rows, columns].sum(), cost[rows, want].sum(), atol=1e-5)
        if trial % 2:  # continuous costs: the optimum is unique
            np.testing.assert_array_equal(columns, want)


def test_hungarian_batches_and_padding_rows_change_nothing():
    rng = np.random.default_rng(3)
    cost = rng.normal(size=(5, 4, 10)).astype(np.float32)
    cost[:, 2:] = 0.0  # two padding rows per image: one constant cost
    got = np.asarray(jax.jit(hungarian_match)(cost))
    for i in range(5):
        _, want = linear_sum_assignment(cost[i, :2])
        np.testing.assert_array_equal(got[i, :2], want)
        assert len(set(got[i].tolist())) == 4
    with pytest.raises(ValueError, match="at least as many columns"):
        hungarian_match(jnp.zeros((3, 2)))


# ---------------------------------------------------------------------------- costs and losses


def _corners(c):
    return np.stack([c[..., 0] - c[..., 2] / 2, c[..., 1] - c[..., 3] / 2,
                     c[..., 0] + c[..., 2] / 2, c[..., 1] + c[..., 3] / 2], -1)


def _iou_giou(a, b):
    """One pair of corner boxes, by the definitions."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return inter / union, inter / union - (hull - union) / hull


def _log_softmax(x):
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _focal(x, alpha, gamma):
    p = _sigmoid(x)
    return alpha * (1 - p) ** gamma * -np.log(p), (1 - alpha) * p ** gamma * -np.log(1 - p)


@pytest.fixture(scope="module")
def case():
    """2 images x 6 tokens, 3 base classes, up to 2 boxes (image 1 has one)."""
    rng = np.random.default_rng(7)
    b, n, k, e = 2, 6, 3, 5
    centre = np.concatenate([rng.uniform(0.25, 0.75, (b, n, 2)), rng.uniform(0.1, 0.4, (b, n, 2))], -1)
    embed = rng.normal(size=(b, n, e))
    embed /= np.linalg.norm(embed, axis=-1, keepdims=True)
    outputs = {"pred_boxes": centre, "class_embed": embed,
               "class_logits": rng.normal(size=(b, n, k)) * 2,
               "background_logit": rng.normal(size=(b, n)), "objectness": rng.normal(size=(b, n))}
    boxes = np.array([[[0.1, 0.2, 0.5, 0.6], [0.5, 0.4, 0.9, 0.95]],
                      [[0.3, 0.3, 0.7, 0.6], [0.0, 0.0, 0.0, 0.0]]])
    labels = np.array([[2, 0], [1, -1]])
    targets = rng.normal(size=(b, 2, e))
    return outputs, boxes, labels, targets


def _numpy_cost(outputs, boxes, labels, o):
    b, n, _ = outputs["class_logits"].shape
    cost = np.zeros((b, labels.shape[1], n))
    for i in range(b):
        for m in range(labels.shape[1]):
            if labels[i, m] < 0:
                continue
            g = boxes[i, m]
            gc = np.array([(g[0] + g[2]) / 2, (g[1] + g[3]) / 2, g[2] - g[0], g[3] - g[1]])
            for t in range(n):
                logits = outputs["class_logits"][i, t]
                if o["class_loss"] == "softmax":
                    full = np.concatenate([[outputs["background_logit"][i, t]], logits])
                    cls = -np.exp(_log_softmax(full))[1 + labels[i, m]]
                else:
                    pos, neg = _focal(logits[labels[i, m]], o["focal_alpha"], o["focal_gamma"])
                    cls = pos - neg
                pred = outputs["pred_boxes"][i, t]
                _, giou = _iou_giou(g, _corners(pred))
                cost[i, m, t] = (o["match_class"] * cls + o["match_l1"] * np.abs(pred - gc).sum()
                                 - o["match_giou"] * giou)
    return cost


def _numpy_losses(outputs, boxes, labels, targets, columns, o):
    b, n, k = outputs["class_logits"].shape
    num_boxes = max((labels >= 0).sum(), 1)
    token_label = np.full((b, n), -1)
    for i in range(b):
        for m in range(labels.shape[1]):
            if labels[i, m] >= 0:
                token_label[i, columns[i, m]] = labels[i, m]
    if o["class_loss"] == "softmax":
        total = weights = 0.0
        for i in range(b):
            for t in range(n):
                full = np.concatenate([[outputs["background_logit"][i, t]],
                                       outputs["class_logits"][i, t]])
                w = 1.0 if token_label[i, t] >= 0 else o["background_weight"]
                total += -w * _log_softmax(full)[token_label[i, t] + 1]
                weights += w
        class_loss = total / weights
    else:
        pos, neg = _focal(outputs["class_logits"], o["focal_alpha"], o["focal_gamma"])
        onehot = np.zeros((b, n, k))
        for i, t in zip(*np.nonzero(token_label >= 0), strict=True):
            onehot[i, t, token_label[i, t]] = 1
        class_loss = (onehot * pos + (1 - onehot) * neg).sum() / num_boxes
    l1 = giou_loss = image = 0.0
    for i in range(b):
        for m in range(labels.shape[1]):
            if labels[i, m] < 0:
                continue
            g, t = boxes[i, m], columns[i, m]
            gc = np.array([(g[0] + g[2]) / 2, (g[1] + g[3]) / 2, g[2] - g[0], g[3] - g[1]])
            l1 += np.abs(outputs["pred_boxes"][i, t] - gc).sum()
            giou_loss += 1 - _iou_giou(_corners(outputs["pred_boxes"][i, t]), g)[1]
            image += np.abs(outputs["class_embed"][i, t] - targets[i, m]).sum()
    p = _sigmoid(outputs["objectness"])
    objectness = -np.mean(np.where(token_label >= 0, np.log(p), np.log(1 - p)))
    out = {"class_loss": class_loss, "l1_loss": l1 / num_boxes, "giou_loss": giou_loss / num_boxes,
           "image_loss": image / num_boxes, "objectness_loss": objectness}
    out["loss"] = (o["class_weight"] * class_loss + o["l1_weight"] * out["l1_loss"]
                   + o["giou_weight"] * out["giou_loss"] + o["image_weight"] * out["image_loss"]
                   + o["objectness_weight"] * objectness)
    return out


@pytest.mark.parametrize("class_loss", objective.CLASS_LOSSES)
def test_cost_matching_and_losses_match_numpy(case, class_loss):
    outputs, boxes, labels, targets = case
    o = {**objective.OPTIONS, "class_loss": class_loss, "background_weight": 0.3,
         "image_weight": 0.5}
    jx = {key: jnp.asarray(v, jnp.float32) for key, v in outputs.items()}
    cost = np.asarray(objective.match_cost(jx, jnp.asarray(boxes, jnp.float32),
                                           jnp.asarray(labels), o))
    want_cost = _numpy_cost(outputs, boxes, labels, o)
    np.testing.assert_allclose(cost, want_cost, rtol=1e-4, atol=1e-5)
    batch = {"boxes": jnp.asarray(boxes, jnp.float32), "box_labels": jnp.asarray(labels),
             "box_targets": jnp.asarray(targets, jnp.float32)}
    loss, metrics = jax.jit(lambda out, b: objective.ov_detection_loss(out, o, b))(jx, batch)
    columns = np.zeros(labels.shape, int)
    for i in range(len(labels)):
        real = labels[i] >= 0
        _, cols = linear_sum_assignment(want_cost[i][real])
        columns[i, real] = cols
    want = _numpy_losses(outputs, boxes, labels, targets, columns, o)
    for key, value in want.items():
        assert float(metrics[key]) == pytest.approx(value, rel=1e-4, abs=1e-5), key
    assert float(loss) == pytest.approx(want["loss"], rel=1e-4)


def test_losses_are_differentiable_and_image_weight_zero_drops_the_teacher(case):
    outputs, boxes, labels, targets = case
    jx = {key: jnp.asarray(v, jnp.float32) for key, v in outputs.items()}
    batch = {"boxes": jnp.asarray(boxes, jnp.float32), "box_labels": jnp.asarray(labels),
             "box_targets": jnp.asarray(targets, jnp.float32)}
    grads = jax.grad(lambda out: objective.ov_detection_loss(out, {}, batch)[0])(jx)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    assert np.abs(np.asarray(grads["class_embed"])).sum() > 0
    grads = jax.grad(lambda out: objective.ov_detection_loss(out, {"image_weight": 0.0},
                                                             batch)[0])(jx)
    np.testing.assert_array_equal(np.asarray(grads["class_embed"]), 0)  # only through logits


# ---------------------------------------------------------------------------- box AP


def test_box_ap_against_a_hand_computed_case():
    from vlmjax.evaluators.box_ap import box_ap, coco_ground_truth
    # Image 0: one class-0 box; image 1: a class-0 box and a class-1 box.
    gt = coco_ground_truth([np.array([[0, 0, 10, 10]]),
                            np.array([[20, 20, 30, 30], [0, 0, 10, 10]])],
                           [np.array([0]), np.array([0, 1])], 3)
    dets = np.array([[0, 0, 0, 10, 10, 0.9, 0],  # class 0: TP
                     [1, 0, 0, 10, 10, 0.8, 0],  # FP (class 1's box called class 0)
                     [1, 20, 20, 30, 30, 0.7, 0],  # TP
                     [1, 0, 0, 10, 10, 0.95, 1],  # class 1: TP
                     [1, 21, 21, 31, 31, 0.5, 1]])  # FP, IoU 0.68 with no class-1 box
    got = box_ap(gt, dets, {"zero": [0], "one": [1], "all": [0, 1], "none": [2]})
    # Class 0, ranked TP, FP, TP over 2 boxes: COCO's 101 recall points, precision 1 up to
    # recall 0.5 (51 points) and 2/3 above (50 points), at every IoU threshold.
    zero = (51 * 1.0 + 50 * 2 / 3) / 101
    assert got["zero/ap"] == pytest.approx(zero) and got["zero/ap50"] == pytest.approx(zero)
    assert got["one/ap"] == pytest.approx(1.0)
    assert got["all/ap"] == pytest.approx((zero + 1) / 2)
    assert np.isnan(got["none/ap"])  # no ground truth of class 2
    # A box of IoU 0.68 is a hit at 0.5..0.65 (4 of 10 thresholds) only.
    shifted = dets.copy()
    shifted[0, 1:5] = [0, 0, 10, 10 / 0.68]
    got = box_ap(gt, shifted[[0]], {"zero": [0]})
    assert got["zero/ap50"] == pytest.approx(51 / 101)
    iou = 100 / (100 / 0.68)
    hits = np.sum(np.linspace(0.5, 0.95, 10) <= iou + 1e-12)
    assert got["zero/ap"] == pytest.approx(hits / 10 * 51 / 101)
