"""Open-vocabulary detection (issue 22, item 3): the jittable Hungarian matcher against SciPy,
the matching cost and every loss against NumPy, box AP against a hand-computed case, the
base / novel split of the detection source, the teacher-target cache keys, a tiny end-to-end
run and the one-line errors."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from tests.conftest import REPO, TINY_CONFIG
from vlmjax.objectives import ov_detection as objective
from vlmjax.objectives.hungarian import hungarian_match

# ---------------------------------------------------------------------------- the matcher


def _second_best_gap(cost: np.ndarray) -> float:
    """Cost of the best assignment that differs from the optimal one, minus the optimal cost
    (float64): the second best avoids at least one optimal pair, so it is the cheapest optimum
    with one of those pairs forbidden."""
    cost = np.asarray(cost, np.float64)
    rows, cols = linear_sum_assignment(cost)
    best = cost[rows, cols].sum()
    others = []
    for r, c in zip(rows, cols, strict=True):
        forbidden = cost.copy()
        forbidden[r, c] = np.inf
        if np.isfinite(forbidden[r]).any():
            try:
                rr, cc = linear_sum_assignment(forbidden)
            except ValueError:  # no assignment without that pair
                continue
            others.append(forbidden[rr, cc].sum())
    return min(others) - best if others else np.inf


def _assert_decided(cost: np.ndarray) -> None:
    """Two float32 computations of this cost matrix (each entry within rounding of the other)
    pick the same assignment: the optimum beats the runner-up by more than their summed
    rounding. Otherwise the test data has a near-tie and an exact comparison means nothing."""
    cost = np.asarray(cost, np.float64)
    tol = 2 * cost.shape[0] * 1e-5 * max(1.0, float(np.abs(cost).max()))
    assert _second_best_gap(cost) > tol, "near-tie in the test data: choose another seed"


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
        # Compared by the objective: the matcher's assignment costs the optimum. Where the
        # optimum beats every other assignment by more than that tolerance (continuous costs,
        # _assert_decided), this means it is SciPy's assignment; tied costs may pick another.
        np.testing.assert_allclose(cost[rows, columns].sum(), cost[rows, want].sum(), atol=1e-5)
        if trial % 2:
            _assert_decided(cost)


def test_hungarian_batches_and_padding_rows_change_nothing():
    rng = np.random.default_rng(3)
    cost = rng.normal(size=(5, 4, 10)).astype(np.float32)
    cost[:, 2:] = 0.0  # two padding rows per image: one constant cost
    got = np.asarray(jax.jit(hungarian_match)(cost))
    for i in range(5):
        rows, want = linear_sum_assignment(cost[i, :2])
        _assert_decided(cost[i, :2])  # so equal cost means SciPy's assignment (see above)
        np.testing.assert_allclose(cost[i, rows, got[i, :2]].sum(), cost[i, rows, want].sum(),
                                   atol=1e-5)
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
        _assert_decided(want_cost[i][real])  # the jitted matcher picks the same assignment
        _, cols = linear_sum_assignment(want_cost[i][real])
        columns[i, real] = cols
    want = _numpy_losses(outputs, boxes, labels, targets, columns, o)
    for key, value in want.items():
        assert float(metrics[key]) == pytest.approx(value, rel=1e-4, abs=1e-5), key
    assert float(loss) == pytest.approx(want["loss"], rel=1e-4)


def test_image_distillation_on_unlabelled_regions_matches_numpy(case):
    """distill_boxes: ViLD-image over class-agnostic regions matched on box costs alone."""
    outputs, boxes, labels, targets = case
    rng = np.random.default_rng(11)
    regions = np.array([[[0.1, 0.2, 0.5, 0.6], [0.5, 0.4, 0.9, 0.95], [0.6, 0.0, 0.9, 0.3]],
                        [[0.3, 0.3, 0.7, 0.6], [0.0, 0.5, 0.4, 0.9], [0, 0, 0, 0]]])
    valid = np.array([[True, True, True], [True, True, False]])
    region_targets = rng.normal(size=(2, 3, 5))
    o = {**objective.OPTIONS, "image_weight": 0.7}
    jx = {key: jnp.asarray(v, jnp.float32) for key, v in outputs.items()}
    batch = {"boxes": jnp.asarray(boxes, jnp.float32), "box_labels": jnp.asarray(labels),
             "box_targets": jnp.asarray(targets, jnp.float32),
             "distill_boxes": jnp.asarray(regions, jnp.float32),
             "distill_valid": jnp.asarray(valid),
             "distill_targets": jnp.asarray(region_targets, jnp.float32)}
    loss, metrics = objective.ov_detection_loss(jx, o, batch)
    total, count = 0.0, 0
    for i in range(2):
        cost = np.zeros((valid[i].sum(), 6))
        for m, g in enumerate(regions[i][valid[i]]):
            gc = np.array([(g[0] + g[2]) / 2, (g[1] + g[3]) / 2, g[2] - g[0], g[3] - g[1]])
            for t in range(6):
                pred = outputs["pred_boxes"][i, t]
                cost[m, t] = (o["match_l1"] * np.abs(pred - gc).sum()
                              - o["match_giou"] * _iou_giou(g, _corners(pred))[1])
        _assert_decided(cost)  # the jitted matcher picks the same assignment
        rows, cols = linear_sum_assignment(cost)
        for m, t in zip(rows, cols, strict=True):
            total += np.abs(outputs["class_embed"][i, t] - region_targets[i][valid[i]][m]).sum()
            count += 1
    assert float(metrics["image_loss"]) == pytest.approx(total / count, rel=1e-4)
    without, rest = objective.ov_detection_loss(jx, {**o, "image_weight": 0.0}, batch)
    assert float(loss) == pytest.approx(float(without) + 0.7 * total / count, rel=1e-4)
    assert float(rest["class_loss"]) == pytest.approx(float(metrics["class_loss"]))


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


# ---------------------------------------------------------------------------- runs and data

TINY = os.path.join(REPO, "configs", "test", "tiny_ov_detection.py")
CANVAS = 32


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, synthetic_data_dir):
    """A tiny CLIP trained 4 steps, checkpoints at steps 2 and 4."""
    from vlmjax.config import load_config_file
    from vlmjax.train.loop import train
    config = load_config_file(TINY_CONFIG)
    config.data.dir = synthetic_data_dir
    config.train.update(num_steps=4, checkpoint_every=2, keep_checkpoints=3)
    config.evals = {}
    workdir = str(tmp_path_factory.mktemp("teacher"))
    train(config, workdir)
    return workdir


@pytest.fixture(scope="module")
def targets(teacher, synthetic_data_dir):
    from vlmjax.train.run import load_run
    from vlmjax.train.teacher_targets import scene_targets
    run = load_run(teacher)
    return scene_targets(run, dataset="fashion_mnist_scenes", data_dir=synthetic_data_dir,
                         canvas=CANVAS, seed=0, num_scenes=40)


def test_targets_are_the_teachers_crop_and_prompt_embeddings(teacher, targets, synthetic_data_dir):
    from vlmjax.data.datasets import load_split
    from vlmjax.data.detection_source import read_targets
    from vlmjax.data.normalization import Normalization
    from vlmjax.data.scenes import get_scene_set, scene, scene_vocabulary, split_pool
    from vlmjax.evaluators.region_classification import square_crop
    from vlmjax.train.run import load_run
    run = load_run(teacher)
    got = read_targets(targets)
    assert got["meta"]["step"] == 4 and got["meta"]["teacher"] == os.path.abspath(teacher)
    model, normalize = run.model(), Normalization.from_config(run.config["data"])
    images, labels = load_split("fashion_mnist", synthetic_data_dir, "train")
    s = scene(get_scene_set("fashion_mnist_scenes"), split_pool(images, labels, "train"),
              "train", CANVAS, 3, 0)
    np.testing.assert_array_equal(got["labels"][3, :len(s.labels)], s.labels)
    assert np.all(got["labels"][3, len(s.labels):] == -1)
    for i, box in enumerate(s.boxes):  # ViLD: 1x and 1.5x crops, normalised, averaged, renormalised
        crops = np.stack([square_crop(s.image[..., None], box, scale, 28) for scale in (1.0, 1.5)])
        emb = np.asarray(model.encode_image(normalize(jnp.asarray(crops))), np.float64)
        want = emb.mean(0) / np.linalg.norm(emb.mean(0))
        np.testing.assert_allclose(got["box_targets"][3, i], want, rtol=1e-4, atol=1e-5)
    vocab = scene_vocabulary()
    ids, mask = run.tokenizer.encode([t.format(c="sandal") for t in vocab["templates"]], 12)
    text = np.asarray(model.encode_text(jnp.asarray(ids), jnp.asarray(mask)), np.float64)
    want = text.mean(0) / np.linalg.norm(text.mean(0))
    np.testing.assert_allclose(got["class_embed"][got["classnames"].index("sandal")], want,
                               rtol=1e-4, atol=1e-5)


def test_the_cache_is_keyed_by_teacher_step_and_data(teacher, targets, synthetic_data_dir):
    from vlmjax.train.run import load_run
    from vlmjax.train.teacher_targets import scene_targets
    kwargs = dict(dataset="fashion_mnist_scenes", data_dir=synthetic_data_dir, canvas=CANVAS,
                  seed=0, num_scenes=40)
    mtime = os.path.getmtime(targets)
    assert scene_targets(load_run(teacher), **kwargs) == targets  # read back, not recomputed
    assert os.path.getmtime(targets) == mtime
    earlier = scene_targets(load_run(teacher, 2), **kwargs)
    assert earlier != targets
    a, b = np.load(earlier), np.load(targets)
    np.testing.assert_array_equal(a["labels"], b["labels"])
    assert not np.allclose(a["box_targets"], b["box_targets"])  # another step's weights
    other = scene_targets(load_run(teacher), **{**kwargs, "seed": 1, "num_scenes": 8})
    assert other not in (targets, earlier)


def _source_config(targets, data_dir, **data):
    from vlmjax.config import load_config_file
    from vlmjax.config.schema import complete
    config = load_config_file(f"{TINY}:{targets}")
    config.data.dir = data_dir
    config.data.update(data)
    return complete(config)


def test_the_source_labels_base_classes_only_and_resumes(targets, synthetic_data_dir):
    from vlmjax.config.validate import validate
    from vlmjax.data.datasets import load_split
    from vlmjax.data.detection_source import NOVEL_CLASSES, read_targets
    from vlmjax.data.registry import get_train_source
    from vlmjax.data.scenes import get_scene_set, scene, split_pool
    config = _source_config(targets, synthetic_data_dir, distill_boxes="all")
    validate(config, 8)
    cfg = config.to_dict()
    source = get_train_source(cfg["data"])
    it = source.build(cfg, None, slice(None), 0, 1)
    cached = read_targets(targets)
    names = cached["classnames"]
    novel = [names.index(c) for c in NOVEL_CLASSES]
    base = [k for k in range(10) if k not in novel]
    images, labels = load_split("fashion_mnist", synthetic_data_dir, "train")
    pool, spec = split_pool(images, labels, "train"), get_scene_set("fashion_mnist_scenes")
    novel_items = 0
    for k in range(3):  # 48 canvases: past the 40 of the file, which then repeat
        batch = next(it)
        np.testing.assert_allclose(batch["class_embed"][0], cached["class_embed"][base])
        for row in range(16):
            position = (k * 16 + row) % 40
            s = scene(spec, pool, "train", CANVAS, position, 0)
            np.testing.assert_array_equal(batch["image"][row, ..., 0], s.image)
            keep = [i for i, c in enumerate(s.labels) if c not in novel]
            novel_items += len(s.labels) - len(keep)
            got = batch["box_labels"][row]
            np.testing.assert_array_equal(got[:len(keep)], [base.index(c) for c in s.labels[keep]])
            assert np.all(got[len(keep):] == -1)
            np.testing.assert_allclose(batch["boxes"][row, :len(keep)], s.boxes[keep] / CANVAS)
            np.testing.assert_allclose(batch["box_targets"][row, :len(keep)],
                                       cached["box_targets"][position, keep])
            # Unlabelled regions for ViLD-image: every item, novel ones included.
            items = len(s.labels)
            np.testing.assert_allclose(batch["distill_boxes"][row, :items], s.boxes / CANVAS)
            np.testing.assert_array_equal(batch["distill_valid"][row], np.arange(4) < items)
            np.testing.assert_allclose(batch["distill_targets"][row, :items],
                                       cached["box_targets"][position, :items])
    assert novel_items > 0  # novel items are in the images, unlabelled
    state = it.get_state()
    want = next(it)
    again = source.build(cfg, None, slice(None), 0, 1)
    again.set_state(state)
    got = next(again)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])


def test_a_tiny_run_trains_and_evaluates_novel_base_and_all(targets,
                                                            synthetic_data_dir, tmp_path):
    from vlmjax.config import load_config_file
    from vlmjax.train.loop import train
    config = load_config_file(f"{TINY}:{targets}")
    config.data.dir = synthetic_data_dir
    results = train(config, str(tmp_path / "run"))
    ap = results["evals"]["ov_detection/fashion_mnist_scenes"]
    assert set(ap) == {f"{s}/{m}" for s in ("novel", "base", "all") for m in ("ap", "ap50")}
    assert all(0 <= v <= 1 for v in ap.values())
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        logged = [json.loads(line) for line in f if '"image_loss"' in line]
    assert logged and all(np.isfinite(r["loss"]) and r["image_loss"] > 0 for r in logged)


def test_bad_input_fails_in_one_line(targets, synthetic_data_dir, tmp_path):
    from types import SimpleNamespace

    from vlmjax.config import load_config_file
    from vlmjax.config.validate import validate
    from vlmjax.errors import ConfigError, DataError
    from vlmjax.evaluators.ov_detection import load_class_embeddings, novel_indices
    from vlmjax.train.teacher_targets import TeacherEmbedder

    def fails(error, match, config):
        with pytest.raises(error, match=match) as info:
            validate(config, 8)
        assert "\n" not in str(info.value)

    fails(ConfigError, "data.novel_classes", _source_config(
        targets, synthetic_data_dir, novel_classes=("sandal", "hat")))
    fails(ConfigError, "holds every class", _source_config(
        targets, synthetic_data_dir, novel_classes=tuple(np.load(targets)["classnames"])))
    config = _source_config(targets, synthetic_data_dir)
    config.model.embed_dim = 24
    fails(ConfigError, "model.embed_dim=24|embed_dim is 24", config)
    config = _source_config(targets, synthetic_data_dir)
    config.model.image.update(image_size=48)
    fails(ConfigError, "canvases of side 32", config)
    fails(ConfigError, "data.teacher_step", _source_config(targets, synthetic_data_dir,
                                                           teacher_step=2))
    fails(ConfigError, "data.distill_boxes", _source_config(targets, synthetic_data_dir,
                                                            distill_boxes="proposals"))
    fails(DataError, "python -m vlmjax.train.teacher_targets", _source_config(
        str(tmp_path / "absent.npz"), synthetic_data_dir))
    clip = load_config_file(TINY_CONFIG)
    clip.data.dir = synthetic_data_dir
    clip.evals.detect = {"kind": "ov_detection", "class_embeddings": targets, "batch_size": 8}
    fails(ConfigError, "predicts no boxes", clip)
    with pytest.raises(ConfigError, match="without pooled"):
        TeacherEmbedder(SimpleNamespace(config={"model": {"name": "filip"}}, workdir="t"))
    with pytest.raises(ConfigError, match=r"\['hat'\]"):
        novel_indices(["sandal", "bag"], ("hat",), "evals.x.novel_classes")
    with pytest.raises(DataError, match="embeds the classes"):
        load_class_embeddings(targets, ["person", "dog"], "evals.x.class_embeddings")


def _picture(path, h, w, value):
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(path, format="PNG")


@pytest.fixture(scope="module")
def box_benchmarks(tmp_path_factory):
    """Mock COCO (a dog and a crowd) and LVIS (two images, two boxes, with LVIS's federated
    fields) prepared as in test_dense_benchmarks."""
    from vlmjax.data.dense_benchmarks import dense_benchmark
    from vlmjax.data.dense_builders import prepare
    root = tmp_path_factory.mktemp("box_manual")
    data_dir = str(root / "tfds")
    coco = root / "coco"
    _picture(coco / "val2017" / "000000000785.jpg", 20, 40, 30)
    names = dense_benchmark("coco_boxes")["classnames"]
    ids = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)][:80]
    (coco / "annotations").mkdir(parents=True)
    (coco / "annotations" / "instances_val2017.json").write_text(json.dumps({
        "categories": [{"id": i, "name": n} for i, n in zip(ids, names, strict=True)],
        "images": [{"id": 785, "file_name": "000000000785.jpg"}],
        "annotations": [{"image_id": 785, "category_id": 18, "bbox": [2, 4, 10, 6], "iscrowd": 0},
                        {"image_id": 785, "category_id": 1, "bbox": [0, 0, 40, 20], "iscrowd": 1}]}))
    prepare("coco_boxes", str(coco), data_dir)
    # LVIS: image 9 holds a box of category 1203 (frequent) and is verified free of category 1
    # (rare); image 12 a box of category 2 (common) and is free of category 1203; category 2
    # is not exhaustive on image 12.
    lvis = root / "lvis"
    for i in (9, 12):
        _picture(lvis / "train2017" / f"{i:012d}.jpg", 10, 10, 7)
    (lvis / "lvis_v1_val.json").write_text(json.dumps({
        "categories": [{"id": i + 1, "name": f"thing_{i}", "frequency": "rcf"[i % 3]}
                       for i in range(1203)],
        "images": [{"id": 9, "coco_url": "http://x/train2017/000000000009.jpg",
                    "neg_category_ids": [1], "not_exhaustive_category_ids": []},
                   {"id": 12, "coco_url": "http://x/train2017/000000000012.jpg",
                    "neg_category_ids": [1203], "not_exhaustive_category_ids": [2]}],
        "annotations": [{"image_id": 9, "category_id": 1203, "bbox": [1, 1, 3, 3]},
                        {"image_id": 12, "category_id": 2, "bbox": [2, 2, 5, 4]}]}))
    prepare("lvis_boxes", str(lvis), data_dir)
    return data_dir


@pytest.mark.parametrize("dataset", ["coco_boxes", "lvis_boxes"])
def test_the_evaluator_reads_coco_and_lvis_boxes(teacher, box_benchmarks, dataset,
                                                 tmp_path):
    """Item 5: the same detector and evaluator on the registry's box benchmarks (mock data),
    with the teacher's class embeddings of the benchmark's class list."""
    from flax import nnx

    from tests.eval_contexts import make_eval_context
    from vlmjax.config import load_config_file
    from vlmjax.config.schema import complete
    from vlmjax.evaluators.ov_detection import COCO_NOVEL_CLASSES, OVDetection
    from vlmjax.models.ov_detector import OVDetector
    from vlmjax.parallel.mesh import make_mesh
    from vlmjax.train.run import load_run
    from vlmjax.train.teacher_targets import dataset_class_embeddings
    classes = dataset_class_embeddings(load_run(teacher), dataset, box_benchmarks,
                                       str(tmp_path / "classes.npz"))
    config = complete(load_config_file(f"{TINY}:{classes}")).to_dict()
    config["model"]["image"].update(image_size=16, channels=3)
    model = OVDetector(config["model"], 600, 12, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    ctx = make_eval_context({"data": {"dir": "", "image_mean": 0.5, "image_std": 0.5},
                             "model": {"name": "ov_detector", "image": config["model"]["image"]}},
                            graphdef=graphdef, tokenizer=None, context_length=12,
                            mesh=make_mesh({"data": -1, "fsdp": 1, "tensor": 1}),
                            rules=(("batch", ("data", "fsdp")),))
    novel = COCO_NOVEL_CLASSES if dataset == "coco_boxes" else ("thing 1202",)
    evaluator = OVDetection({"dataset": dataset, "data_dir": box_benchmarks, "batch_size": 8,
                             "short_side": 16, "canvas": 32, "class_embeddings": classes,
                             "novel_classes": novel}, ctx)
    got = evaluator.run(params)
    lvis = dataset == "lvis_boxes"
    metrics = ("ap", "ap50", "apr", "apc", "apf") if lvis else ("ap", "ap50")
    assert set(got) == {f"{s}/{m}" for s in ("novel", "base", "all") for m in metrics}
    if not lvis:  # the dog (novel) is the only box that counts (crowds do not)
        assert 0 <= got["novel/ap"] <= 1 and np.isnan(got["base/ap"])
        assert got["all/ap"] == pytest.approx(got["novel/ap"])
        return
    # LVIS: one frequent class (thing 1202, novel) and one common class (thing 1) have boxes;
    # no rare class has one.
    assert evaluator.max_dets == 300  # LVIS's detections per image
    assert all(np.isnan(got[f"{s}/apr"]) for s in ("novel", "base", "all"))
    assert 0 <= got["novel/ap"] <= 1 and got["novel/apf"] == pytest.approx(got["novel/ap"])
    assert np.isnan(got["novel/apc"]) and np.isnan(got["base/apf"])
    assert got["base/apc"] == pytest.approx(got["base/ap"])
    assert got["all/ap"] == pytest.approx((got["novel/ap"] + got["base/ap"]) / 2)
    # Planted detections through the same path: each box found, plus (scored above them) thing
    # 1202 far from any box on image 12, where it is verified absent (a FP: its AP 1/2), and
    # thing 1 far from any box on image 9 (neither positive nor negative there: not counted)
    # and on image 12 (not exhaustive there: ignored). So APf 1/2, APc 1.
    rows = np.arange(2)
    truth = evaluator.source.boxes(rows)
    row9 = next(r for r in rows if evaluator.source.classnames[truth[r][1][0]] == "thing 1202")
    far = [20, 20, 30, 30]
    planted = [[r, *box, 0.5, label] for r in rows for box, label in zip(*truth[r], strict=True)]
    planted += [[1 - row9, *far, 0.9, 1202], [row9, *far, 0.9, 1], [1 - row9, *far, 0.9, 1]]
    evaluator.detections = lambda params, chunk: np.array(
        [d for d in planted if d[0] in chunk]).reshape(-1, 7)
    got = evaluator.run(params)
    assert got["all/apf"] == pytest.approx(0.5) and got["novel/ap"] == pytest.approx(0.5)
    assert got["all/apc"] == pytest.approx(1.0) and got["base/ap"] == pytest.approx(1.0)
    assert got["all/ap"] == pytest.approx(0.75) and got["all/ap50"] == pytest.approx(0.75)


@pytest.mark.parametrize("variant", ["", "vild:", "text:", "regions:"])
def test_the_demo_config_validates(targets, variant):
    from vlmjax.config import load_config_file
    from vlmjax.config.validate import validate
    from vlmjax.errors import ConfigError
    config = load_config_file(os.path.join(REPO, "configs", "demo",
                                           "ov_detection_fashion_mnist.py") + f":{variant}{targets}")
    validate(config, 8, training=False)  # not the source: these tiny targets are 16 wide, not 96
    assert config.data.targets == targets == config.evals.detect.class_embeddings
    assert config.objective.image_weight == (0.0 if variant == "text:" else 1.0)
    assert config.data.distill_boxes == ("all" if variant == "regions:" else "base")
    with pytest.raises(ConfigError, match="unknown variant"):
        load_config_file(os.path.join(REPO, "configs", "demo", "ov_detection_fashion_mnist.py")
                         + ":mask:x.npz")


@pytest.mark.parametrize("tower", ["vit", "resnet"])
def test_the_detector_starts_with_one_box_per_cell_on_vit_and_resnet(tower):
    """OWL-ViT's box bias: before training, token (r, c) of a g x g grid predicts its own cell."""
    import ml_collections
    from flax import nnx

    from vlmjax.config import load_config_file
    from vlmjax.config.schema import complete
    from vlmjax.models.ov_detector import OVDetector
    config = load_config_file(f"{TINY}:x.npz")
    if tower == "resnet":  # 32 -> 16 (stem) -> 8 (stage 1) -> 8: an 8 x 8 grid of tokens
        config.model.image = ml_collections.ConfigDict(dict(kind="resnet", image_size=32,
                                                            channels=1))
        complete(config)
        config.model.image.update(layers=(1, 1), width=8, stem_stride=2, strides=(2, 1),
                                  head_width=16, output_dim=16, proj="none")
    cfg = complete(config).to_dict()
    model = OVDetector(cfg["model"], 600, 12, rngs=nnx.Rngs(0))
    images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 1)), jnp.float32)
    queries = np.eye(16, dtype=np.float32)[:5]
    out = model.detect(images, jnp.asarray(queries))
    g = {"vit": 4, "resnet": 8}[tower]
    cells = np.array([[c / g, r / g, (c + 1) / g, (r + 1) / g] for r in range(g) for c in range(g)])
    np.testing.assert_allclose(out["boxes"][0], cells, atol=2e-4)
    assert out["class_logits"].shape == (2, g * g, 5)
    tokens = model.token_outputs(images)
    cos = np.einsum("bne,ke->bnk", np.asarray(tokens["class_embed"]), queries)
    np.testing.assert_allclose(np.linalg.norm(tokens["class_embed"], axis=-1), 1, rtol=1e-5)
    # Untrained shift 0 and scale elu(0) + 1 = 1: logits are exp(logit_scale) * cosines.
    np.testing.assert_allclose(out["class_logits"], cos * np.exp(cfg["model"]["logit_scale_init"]),
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="class embeddings"):
        model({"image": images})


def test_evaluator_detections_are_the_models_top_scores_in_canvas_pixels(targets,
                                                                          synthetic_data_dir):
    from flax import nnx

    from tests.eval_contexts import make_eval_context
    from vlmjax.config import load_config_file
    from vlmjax.config.schema import complete
    from vlmjax.data.normalization import Normalization
    from vlmjax.evaluators import ov_detection as evaluation
    from vlmjax.models.ov_detector import OVDetector
    from vlmjax.parallel.mesh import make_mesh
    cfg = complete(load_config_file(f"{TINY}:{targets}")).to_dict()
    model = OVDetector(cfg["model"], 600, 12, rngs=nnx.Rngs(1))
    graphdef, params = nnx.split(model)
    ctx = make_eval_context({"data": {**cfg["data"], "dir": synthetic_data_dir},
                             "model": {"name": "ov_detector", "image": cfg["model"]["image"]}},
                            graphdef=graphdef, tokenizer=None, context_length=12,
                            mesh=make_mesh({"data": -1, "fsdp": 1, "tensor": 1}),
                            rules=(("batch", ("data", "fsdp")),))
    ev = evaluation.OVDetection({"num_images": 12, "batch_size": 8, "top_k": 5,
                                 "class_embeddings": targets}, ctx)
    rows = np.arange(12)
    dets = ev.detections(params, rows)
    images, _ = ev.source.rows(rows)
    out = model.detect(Normalization.from_config(cfg["data"])(jnp.asarray(images)),
                       jnp.asarray(np.load(targets)["class_embed"]))
    scores = np.asarray(evaluation.detection_scores(out, "softmax", True))
    for row in rows:
        mine = dets[dets[:, 0] == row]
        flat = scores[row].reshape(-1)
        best = np.argsort(-flat, kind="stable")[:5]
        # The top 5 and their order are decided at float32 precision (no near-tie among the top
        # 6 scores), so the sharded evaluator and this eager forward pick the same ones.
        top6 = -np.sort(-flat)[:6]
        assert np.all(-np.diff(top6) > 1e-5 * np.abs(top6).max()), "near-tie in the test data"
        np.testing.assert_allclose(mine[:, 5], flat[best], rtol=1e-5)
        np.testing.assert_array_equal(mine[:, 6], best % 10)
        boxes = np.clip(np.asarray(out["boxes"][row])[best // 10] * CANVAS, 0, CANVAS)
        np.testing.assert_allclose(mine[:, 1:5], boxes, rtol=1e-5, atol=1e-4)
    # Detections equal to the ground truth score AP 1 on every subset the rows hold.
    truth = [(row, box, lab - 1) for row, (boxes, labels) in zip(rows, ev.source.boxes(rows),
                                                                  strict=True)
             for box, lab in zip(boxes, labels, strict=True)]
    ev.detections = lambda params, chunk: np.array(
        [[r, *b, 1.0, k] for r, b, k in truth if r in chunk]).reshape(-1, 7)
    got = ev.run(params)
    for key, value in got.items():
        assert np.isnan(value) or value == pytest.approx(1.0), key
    assert got["all/ap"] == pytest.approx(1.0)
