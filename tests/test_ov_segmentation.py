"""Open-vocabulary segmentation (issue 22, item 4; MaskCLIP+): the teacher's pseudo-labels
against an independent NumPy computation and the dense evaluator, the cache keys, the source
(pseudo-labels only, exact resume), the loss against NumPy with ignored pixels, novel / base
mIoU against a hand-computed case, a tiny end-to-end run and the one-line errors."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import REPO, TINY_CONFIG

TINY = os.path.join(REPO, "configs", "test", "tiny_ov_segmentation.py")
CANVAS = 32  # the student's; the tiny CLIP teacher takes 28: two windows per side
NUM_SCENES = 24


# ---------------------------------------------------------------------------- loss and metrics


def test_the_loss_matches_numpy_with_ignored_pixels():
    from vlmjax.objectives.pseudo_segmentation import pseudo_segmentation_loss
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 4, 3)) * 3
    labels = rng.integers(0, 3, size=(2, 5, 4))
    labels[0, :2] = 255
    labels[1, 4, 3] = 255
    for smoothing in (0.0, 0.2):
        loss, metrics = pseudo_segmentation_loss(
            {"seg_logits": jnp.asarray(logits, jnp.float32)}, {"label_smoothing": smoothing},
            {"pseudo_mask": jnp.asarray(labels)})
        total, count, correct = 0.0, 0, 0
        for idx in np.ndindex(labels.shape):
            if labels[idx] == 255:
                continue
            x = logits[idx] - logits[idx].max()
            log_p = x - np.log(np.exp(x).sum())
            target = np.full(3, smoothing / 3)
            target[labels[idx]] += 1 - smoothing
            total += -(target * log_p).sum()
            count += 1
            correct += int(np.argmax(logits[idx]) == labels[idx])
        np.testing.assert_allclose(float(loss), total / count, rtol=1e-5)
        np.testing.assert_allclose(float(metrics["pixel_acc"]), correct / count, rtol=1e-6)
    every = np.full((1, 2, 2), 255)
    loss, _ = pseudo_segmentation_loss({"seg_logits": jnp.zeros((1, 2, 2, 3))}, {},
                                       {"pseudo_mask": jnp.asarray(every)})
    assert float(loss) == 0.0


def test_novel_base_and_all_miou_against_a_hand_computed_case():
    from vlmjax.evaluators.dense_metrics import confusion
    from vlmjax.evaluators.ov_segmentation import split_metrics
    names = ["background", "a", "b", "c"]
    # 8 pixels: truth / prediction
    truth = np.array([0, 0, 1, 1, 2, 2, 3, 255])
    pred = np.array([0, 1, 1, 1, 2, 0, 2, 3])
    got = split_metrics(confusion(truth, pred, 4), names, novel=[3], background=0)
    # background: tp 1, fp 1 (pixel 5), fn 1 (pixel 1) -> 1/3; a: tp 2, fp 1 -> 2/3;
    # b: tp 1, fp 1 (pixel 6), fn 1 (pixel 5) -> 1/3; c: tp 0, fn 1 -> 0.
    assert got["novel/miou"] == pytest.approx(0.0)
    assert got["base/miou"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert got["all/miou"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 3 + 0) / 4)
    assert got["background_iou"] == pytest.approx(1 / 3)
    assert got["hiou"] == 0.0 and got["pixel_acc"] == pytest.approx(4 / 7)
    got = split_metrics(confusion(truth, pred, 4), names, novel=[2], background=0)
    assert got["novel/miou"] == pytest.approx(1 / 3) and got["base/miou"] == pytest.approx(1 / 3)
    assert got["hiou"] == pytest.approx(1 / 3) and got["iou/a"] == pytest.approx(2 / 3)


# ---------------------------------------------------------------------------- teacher and data


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
def labels(teacher, synthetic_data_dir):
    from vlmjax.train.run import load_run
    from vlmjax.train.teacher_pseudo_labels import scene_pseudo_labels
    return scene_pseudo_labels(load_run(teacher), data_dir=synthetic_data_dir, canvas=CANVAS,
                               seed=0, num_scenes=NUM_SCENES, calibration_images=16)


def _upsample(x, size):
    """NumPy bilinear upsampling [g, g, k] -> [size, size, k] (half-pixel centres, edges held)."""
    g = x.shape[0]
    src = np.clip((np.arange(size) + 0.5) * g / size - 0.5, 0, g - 1)
    lo = np.floor(src).astype(int)
    hi, frac = np.minimum(lo + 1, g - 1), src - lo
    rows = x[lo] * (1 - frac)[:, None, None] + x[hi] * frac[:, None, None]
    return rows[:, lo] * (1 - frac)[None, :, None] + rows[:, hi] * frac[None, :, None]


def test_pseudo_labels_are_the_teachers_dense_prediction(teacher, labels, synthetic_data_dir):
    """MaskCLIP features of each 28-pixel window (models.dense), cosines with the prompt-ensemble
    class embeddings, NumPy upsampling and window averaging, the stored threshold."""
    from vlmjax.data.datasets import load_split
    from vlmjax.data.normalization import Normalization
    from vlmjax.data.pseudo_seg_source import read_pseudo_labels
    from vlmjax.data.scenes import get_scene_set, scene, scene_vocabulary, split_pool
    from vlmjax.models.dense import dense_embeddings
    from vlmjax.train.run import load_run
    from vlmjax.train.teacher_pseudo_labels import stored_rule
    run = load_run(teacher)
    got = read_pseudo_labels(labels)
    rule = stored_rule(labels)
    assert got["meta"]["step"] == 4 and got["meta"]["method"] == "maskclip"
    assert rule.kind == "learned" and np.isfinite(rule.threshold)
    assert got["masks"].shape == (NUM_SCENES, CANVAS, CANVAS)
    model, normalize = run.model(), Normalization.from_config(run.config["data"])
    vocab = scene_vocabulary()
    ids, mask = run.tokenizer.encode([t.format(c=c) for c in vocab["classnames"][1:]
                                      for t in vocab["templates"]], 12)
    text = np.asarray(model.encode_text(jnp.asarray(ids), jnp.asarray(mask)), np.float64)
    text = text.reshape(10, len(vocab["templates"]), -1).mean(1)
    classes = text / np.linalg.norm(text, axis=-1, keepdims=True)
    np.testing.assert_allclose(got["class_embed"], classes, rtol=1e-4, atol=1e-5)
    images, item_labels = load_split("fashion_mnist", synthetic_data_dir, "train")
    pool, spec = split_pool(images, item_labels, "train"), get_scene_set("fashion_mnist_scenes")
    agree = total = 0
    for index in range(6):
        s = scene(spec, pool, "train", CANVAS, index, 0)
        x = normalize(jnp.asarray(s.image[None, ..., None]))
        score, count = np.zeros((CANVAS, CANVAS, 11)), np.zeros((CANVAS, CANVAS, 1))
        for y in (0, 4):
            for c in (0, 4):
                raw = np.asarray(dense_embeddings(model, x[:, y:y + 28, c:c + 28], "maskclip",
                                                  normalize=False), np.float64)[0]
                norm = np.linalg.norm(raw, axis=-1, keepdims=True)
                both = np.concatenate([raw / norm @ classes.T, np.log(norm)], -1)
                score[y:y + 28, c:c + 28] += _upsample(both, 28)
                count[y:y + 28, c:c + 28] += 1
        score /= count
        log_norm, score = score[..., 10], score[..., :10]
        # the learned rule: logistic on standardised (best cosine, log norm, margin 0, and the
        # cosine and log norm minus their canvas's highest)
        best = score.max(-1)
        features = np.stack([best, log_norm, np.zeros_like(log_norm), best - best.max(),
                             log_norm - log_norm.max()], -1)
        value = (features - rule.mean) / rule.std @ rule.weights[:-1] + rule.weights[-1]
        want = np.where(value < rule.threshold, 0, score.argmax(-1) + 1)
        clear = np.sort(score, -1)[..., -1] - np.sort(score, -1)[..., -2] > 1e-4
        clear &= np.abs(value - rule.threshold) > 1e-3
        agree += np.sum((got["masks"][index] == want) & clear)
        total += clear.sum()
        np.testing.assert_array_equal(got["labels"][index, :len(s.labels)], s.labels)
    assert total > 0.9 * 6 * CANVAS * CANVAS and agree == total


def test_the_segmenter_agrees_with_the_dense_evaluator(teacher, synthetic_data_dir):
    """On canvases of the teacher's size: the dense_segmentation evaluator's maskclip
    prediction with the same threshold (its own prompts, windows and upsampling)."""
    from vlmjax.evaluators.dense_background import BackgroundRule
    from vlmjax.evaluators.dense_segmentation import DenseSegmentation
    from vlmjax.train.eval_context import eval_context
    from vlmjax.train.run import load_run
    from vlmjax.train.teacher_pseudo_labels import TeacherSegmenter
    run = load_run(teacher)
    ctx = eval_context(run.config, run.graphdef, run.tokenizer, run.mesh)
    segmenter = TeacherSegmenter(run, "maskclip")
    evaluator = DenseSegmentation({"methods": ("maskclip",), "background": "threshold",
                                   "num_images": 8, "batch_size": 8,
                                   "data_dir": synthetic_data_dir}, ctx)
    classifier = evaluator.prompts.classifier(run.weights)
    best, features, _, images = next(evaluator._predictions(evaluator.source, "maskclip",
                                                            run.weights, classifier))
    threshold = float(np.median(features[..., 0]))
    want = np.where(features[..., 0] < threshold, 0, best + 1)
    got = segmenter.segment(images, BackgroundRule("threshold", threshold))
    _, ours = segmenter.best(images)
    np.testing.assert_allclose(ours[..., :2], features[..., :2], rtol=1e-4, atol=1e-4)
    clear = np.abs(ours[..., 0] - threshold) > 1e-4
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(got[clear], want[clear])


def test_the_cache_is_keyed_by_teacher_step(teacher, labels, synthetic_data_dir):
    from vlmjax.train.run import load_run
    from vlmjax.train.teacher_pseudo_labels import scene_pseudo_labels
    kwargs = dict(data_dir=synthetic_data_dir, canvas=CANVAS, seed=0, num_scenes=NUM_SCENES,
                  calibration_images=16)
    mtime = os.path.getmtime(labels)
    assert scene_pseudo_labels(load_run(teacher), **kwargs) == labels  # read back
    assert os.path.getmtime(labels) == mtime
    earlier = scene_pseudo_labels(load_run(teacher, 2), **kwargs)
    assert earlier != labels
    a, b = np.load(earlier), np.load(labels)
    assert json.loads(str(a["meta"]))["step"] == 2
    assert not np.allclose(a["class_embed"], b["class_embed"])  # another step's weights
    fixed = scene_pseudo_labels(load_run(teacher), **kwargs, background="threshold",
                                threshold=0.0)
    assert fixed not in (labels, earlier) and float(np.load(fixed)["threshold"]) == 0.0
    calibrated = scene_pseudo_labels(load_run(teacher), **kwargs, background="calibrated")
    assert calibrated not in (labels, earlier, fixed)
    assert str(np.load(calibrated)["rule_kind"]) == "calibrated"


def _source_config(labels, data_dir, **data):
    from vlmjax.config import load_config_file
    from vlmjax.config.schema import complete
    config = load_config_file(f"{TINY}:{labels}")
    config.data.dir = data_dir
    config.data.update(data)
    return complete(config)


def test_batches_hold_pseudo_labels_only_and_resume(labels, synthetic_data_dir):
    from vlmjax.config.validate import validate
    from vlmjax.data.datasets import load_split
    from vlmjax.data.pseudo_seg_source import read_pseudo_labels
    from vlmjax.data.registry import get_train_source
    from vlmjax.data.scenes import get_scene_set, scene, split_pool
    config = _source_config(labels, synthetic_data_dir)
    validate(config, 8)
    cfg = config.to_dict()
    source = get_train_source(cfg["data"])
    it = source.build(cfg, None, slice(None), 0, 1)
    cached = read_pseudo_labels(labels)
    images, item_labels = load_split("fashion_mnist", synthetic_data_dir, "train")
    pool, spec = split_pool(images, item_labels, "train"), get_scene_set("fashion_mnist_scenes")
    differs = 0
    for k in range(2):  # 32 canvases: past the 24 of the file, which then repeat
        batch = next(it)
        assert set(batch) == {"image", "label", "pseudo_mask", "class_embed"}
        assert np.all(batch["label"] == -1)
        np.testing.assert_allclose(batch["class_embed"][3], cached["class_embed"])
        for row in range(16):
            position = (k * 16 + row) % NUM_SCENES
            s = scene(spec, pool, "train", CANVAS, position, 0)
            np.testing.assert_array_equal(batch["image"][row, ..., 0], s.image)
            np.testing.assert_array_equal(batch["pseudo_mask"][row], cached["masks"][position])
            differs += int(not np.array_equal(batch["pseudo_mask"][row], s.mask))
    assert differs > 0  # the tiny teacher's labels, not the ground truth
    state = it.get_state()
    want = next(it)
    again = source.build(cfg, None, slice(None), 0, 1)
    again.set_state(state)
    got = next(again)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])


def test_a_tiny_run_trains_and_evaluates_novel_base_and_all(labels, synthetic_data_dir,
                                                            tmp_path):
    from vlmjax.config import load_config_file
    from vlmjax.train.loop import train
    config = load_config_file(f"{TINY}:{labels}")
    config.data.dir = synthetic_data_dir
    results = train(config, str(tmp_path / "run"))
    got = results["evals"]["ov_segmentation/fashion_mnist_scenes"]
    for key in ("novel/miou", "base/miou", "all/miou", "hiou", "pixel_acc", "background_iou"):
        assert 0 <= got[key] <= 1, key
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        logged = [json.loads(line) for line in f if '"pixel_acc"' in line and '"loss"' in line]
    assert logged and all(np.isfinite(r["loss"]) for r in logged)


def test_the_segmenter_scores_background_then_the_given_classes(labels, synthetic_data_dir):
    from flax import nnx

    from vlmjax.config import load_config_file
    from vlmjax.config.schema import complete
    from vlmjax.models.registry import get_family
    cfg = complete(load_config_file(f"{TINY}:{labels}")).to_dict()
    model = get_family(cfg["model"]).build(cfg["model"], 600, 12, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(1)
    images = jnp.asarray(rng.normal(size=(2, CANVAS, CANVAS, 1)), jnp.float32)
    queries = rng.normal(size=(3, 16))
    queries /= np.linalg.norm(queries, axis=-1, keepdims=True)
    logits = np.asarray(model.segment(images, jnp.asarray(queries, jnp.float32)))
    assert logits.shape == (2, CANVAS, CANVAS, 4)
    embed = np.asarray(model.token_embeddings(images))  # [2, 4, 4, 16], unit
    bg = np.asarray(model.background[...])
    classes = np.concatenate([bg[None] / np.linalg.norm(bg), queries])
    coarse = embed @ classes.T * np.exp(float(model.logit_scale[...]))
    want = np.stack([_upsample(c, CANVAS) for c in coarse])
    np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-4)


def test_teacher_baseline_is_scored_like_the_evaluator(teacher, synthetic_data_dir):
    from vlmjax.data.datasets import load_split
    from vlmjax.data.scenes import get_scene_set, scene, split_pool
    from vlmjax.evaluators.dense_background import BackgroundRule
    from vlmjax.evaluators.dense_metrics import confusion, iou_per_class
    from vlmjax.train.run import load_run
    from vlmjax.train.teacher_pseudo_labels import TeacherSegmenter, teacher_baseline
    segmenter = TeacherSegmenter(load_run(teacher))
    rule = BackgroundRule("threshold", 0.1)
    got = teacher_baseline(segmenter, rule, data_dir=synthetic_data_dir, canvas=CANVAS,
                           num_images=10)
    images, item_labels = load_split("fashion_mnist", synthetic_data_dir, "test")
    pool = split_pool(images, item_labels, "test")
    scenes = [scene(get_scene_set("fashion_mnist_scenes"), pool, "test", CANVAS, i)
              for i in range(10)]
    pred = segmenter.segment(np.stack([s.image for s in scenes])[..., None], rule)
    iou = iou_per_class(confusion(np.stack([s.mask for s in scenes]), pred, 11))
    novel = [2, 6, 9]  # trousers, sandal, bag + 1
    np.testing.assert_allclose(got["novel/miou"], np.nanmean(iou[novel]))
    np.testing.assert_allclose(got["base/miou"], np.nanmean(np.delete(iou, [0, *novel])))


def test_bad_input_fails_in_one_line(teacher, labels, synthetic_data_dir, tmp_path):
    from vlmjax.config import load_config_file
    from vlmjax.config.validate import validate
    from vlmjax.errors import ConfigError, DataError
    from vlmjax.train.run import load_run
    from vlmjax.train.teacher_pseudo_labels import TeacherSegmenter, resolve_rule

    def fails(error, match, config):
        with pytest.raises(error, match=match) as info:
            validate(config, 8)
        assert "\n" not in str(info.value)

    config = _source_config(labels, synthetic_data_dir)
    config.model.embed_dim = 24
    fails(ConfigError, "embed_dim is 24", config)
    config = _source_config(labels, synthetic_data_dir)
    config.model.image.update(image_size=48)
    fails(ConfigError, "canvases of side 32", config)
    fails(ConfigError, "data.teacher_step", _source_config(labels, synthetic_data_dir,
                                                           teacher_step=2))
    fails(DataError, "python -m vlmjax.train.teacher_pseudo_labels", _source_config(
        str(tmp_path / "absent.npz"), synthetic_data_dir))
    config = _source_config(labels, synthetic_data_dir)
    config.evals.segment.novel_classes = ("sandal", "hat")
    with pytest.raises(ConfigError, match=r"\['hat'\]"):
        from vlmjax.train.loop import train
        train(config, str(tmp_path / "bad"))
    clip = load_config_file(TINY_CONFIG)
    clip.data.dir = synthetic_data_dir
    clip.evals.segment = {"kind": "ov_segmentation", "class_embeddings": labels, "batch_size": 8}
    fails(ConfigError, "predicts no masks", clip)
    run = load_run(teacher)
    with pytest.raises(ConfigError, match="--method 'dino'"):
        TeacherSegmenter(run, "dino")
    with pytest.raises(ConfigError, match="--background 'otsu'"):
        resolve_rule(None, "otsu", 0.0, synthetic_data_dir, CANVAS, 4)


def test_the_demo_config_validates(labels, synthetic_data_dir):
    from vlmjax.config import load_config_file
    from vlmjax.config.validate import validate
    from vlmjax.errors import ConfigError
    config = load_config_file(os.path.join(REPO, "configs", "demo",
                                           "ov_segmentation_fashion_mnist.py") + f":{labels}")
    config.data.dir = synthetic_data_dir
    assert config.model.name == "ov_segmenter" and config.model.embed_dim == 96
    # The tiny teacher's labels are for 32x32 canvases and 16 dimensions: refused in one line.
    with pytest.raises(ConfigError, match="canvases of side 32"):
        validate(config, 8)
    config.model.image.update(image_size=CANVAS, patch_size=8)
    config.model.embed_dim = 16
    validate(config, 8)


# ---------------------------------------------------------------------------- item 5: benchmarks


def _save(path, array):
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path, format="PNG")


@pytest.fixture(scope="module")
def mask_benchmarks(tmp_path_factory):
    """Mock VOC 2012 (a person, background, a boundary) and ADE20K (no background class)
    prepared as in test_dense_benchmarks."""
    from PIL import Image

    from vlmjax.data.dense_builders import prepare
    root = tmp_path_factory.mktemp("mask_manual")
    data_dir = str(root / "tfds")
    voc = root / "VOCdevkit" / "VOC2012"
    mask = np.zeros((12, 20), np.uint8)
    mask[2:10, 4:12] = 15
    mask[1, :] = 255
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    for split, ids in (("train", ["2007_000001"]), ("val", ["2007_000002", "2007_000003"])):
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for i, value in zip(ids, (60, 140), strict=False):
            _save(voc / "JPEGImages" / f"{i}.jpg", np.random.default_rng(value).integers(
                0, 255, (12, 20, 3)))
            pil = Image.fromarray(mask, mode="P")
            pil.putpalette([0, 0, 0] * 256)
            (voc / "SegmentationClass").mkdir(parents=True, exist_ok=True)
            pil.save(voc / "SegmentationClass" / f"{i}.png")
    prepare("voc2012_segmentation", str(voc), data_dir)
    ade = root / "ADEChallengeData2016"
    ade_mask = np.zeros((10, 10), np.uint8)
    ade_mask[:5] = 1
    ade_mask[5:, :5] = 150
    for split in ("training", "validation"):
        _save(ade / "images" / split / "ADE_x_1.jpg", np.random.default_rng(3).integers(
            0, 255, (10, 10, 3)))
        _save(ade / "annotations" / split / "ADE_x_1.png", ade_mask)
    prepare("ade20k_150", str(ade), data_dir)
    return data_dir


@pytest.mark.parametrize("dataset,novel", [
    ("voc2012_segmentation", ("cow", "motorbike", "aeroplane", "sofa", "cat", "tv monitor")),
    ("ade20k_150", ("wall", "sky"))])
def test_the_evaluator_reads_voc_and_ade20k_masks(teacher, mask_benchmarks, dataset, novel,
                                                  tmp_path):
    """Item 5: the same segmenter and evaluator on the registry's mask benchmarks (mock data),
    with the teacher's class embeddings of the benchmark's class list; the metrics are those of
    the model's own per-pixel argmax (canvas resized to the model and the logits back)."""
    from flax import nnx

    from tests.eval_contexts import make_eval_context
    from vlmjax.config import load_config_file
    from vlmjax.config.schema import complete
    from vlmjax.evaluators.dense_metrics import confusion
    from vlmjax.evaluators.ov_segmentation import OVSegmentation, split_metrics
    from vlmjax.models.ov_segmenter import OVSegmenter
    from vlmjax.parallel.mesh import make_mesh
    from vlmjax.train.run import load_run
    from vlmjax.train.teacher_targets import dataset_class_embeddings
    classes = dataset_class_embeddings(load_run(teacher), dataset, mask_benchmarks,
                                       str(tmp_path / "classes.npz"))
    config = complete(load_config_file(f"{TINY}:{classes}")).to_dict()
    config["model"]["image"].update(image_size=16, channels=3)
    model = OVSegmenter(config["model"], 600, 12, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    ctx = make_eval_context({"data": {"dir": "", "image_mean": 0.5, "image_std": 0.5},
                             "model": {"name": "ov_segmenter", "image": config["model"]["image"]}},
                            graphdef=graphdef, tokenizer=None, context_length=12,
                            mesh=make_mesh({"data": -1, "fsdp": 1, "tensor": 1}),
                            rules=(("batch", ("data", "fsdp")),))
    evaluator = OVSegmentation({"dataset": dataset, "data_dir": mask_benchmarks, "batch_size": 8,
                                "short_side": 16, "canvas": 32, "class_embeddings": classes,
                                "novel_classes": novel}, ctx)
    got = evaluator.run(params)
    source = evaluator.source
    images, masks = source.rows(np.arange(source.num_rows))
    x = (jnp.asarray(images, jnp.float32) / 255 - 0.5) / 0.5
    logits = model.segment(jax.image.resize(x, (len(x), 16, 16, 3), "linear"),
                           jnp.asarray(np.load(classes)["class_embed"]))
    logits = np.asarray(jax.image.resize(logits, (*x.shape[:3], logits.shape[-1]), "linear"))
    names = source.classnames
    first = 0 if source.background >= 0 else 1
    logits = logits[..., first:]
    ours = np.asarray([source.background, *[i for i in range(len(names))
                                             if i != source.background]])[first:][
        logits.argmax(-1)]
    theirs = evaluator.predictions(params, images)
    top2 = np.sort(logits, -1)[..., -2:]
    decided = top2[..., 1] - top2[..., 0] > 1e-4  # beyond float32 rounding of the two programs
    assert decided.mean() > 0.9
    np.testing.assert_array_equal(theirs[decided], ours[decided])
    want = split_metrics(confusion(masks, theirs, len(names)), names,
                         [names.index(c) for c in novel], source.background)
    assert got.keys() == want.keys()
    for key in want:  # the same program's predictions: the same metrics
        np.testing.assert_allclose(got[key], want[key], err_msg=key)
    assert ("background_iou" in got) == (dataset == "voc2012_segmentation")


def test_a_rule_on_fewer_features_is_refused(tmp_path):
    """A pseudo-label file from before the relative features (three decision features) names
    the command that makes it again instead of failing inside NumPy."""
    from vlmjax.errors import ConfigError
    from vlmjax.train.teacher_pseudo_labels import stored_rule
    path = str(tmp_path / "old.npz")
    np.savez(path, rule_kind="learned", threshold=0.0, rule_mean=np.zeros(3),
             rule_std=np.ones(3), rule_weights=np.zeros(4))
    with pytest.raises(ConfigError, match="teacher_pseudo_labels"):
        stored_rule(path)
