"""The dense evaluators on planted models: zero-shot segmentation (every background mode, against
masks scored in NumPy with an independent bilinear upsampling) and region classification
(crops and RoI pooling); the errors users can hit, each in one line before anything compiles."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.conftest import REPO, write_split
from tests.test_zeroshot import ClassIdTokenizer
from vlmjax.config import load_config_file
from vlmjax.data.dense_sources import open_dense_source
from vlmjax.data.scenes import scene_vocabulary
from vlmjax.errors import ConfigError, DataError
from vlmjax.evaluators.dense_segmentation import DenseSegmentation, windows
from vlmjax.evaluators.region_classification import (
    RegionClassification,
    patch_weights,
    square_crop,
)
from vlmjax.parallel.mesh import make_mesh

from .eval_contexts import make_eval_context

SIZE, PATCH = 16, 8  # a 2x2 grid canvas whose cells are the patches
CONFUSED = {3: 5}  # the planted model takes dresses for sandals
OBJECTS = scene_vocabulary()["classnames"][1:]


def _value(k: int) -> int:
    return 40 + 20 * k  # item pixels of class k (all above the mask threshold)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    """Fashion-MNIST-format files whose items are uniform squares of a class's brightness."""
    d = str(tmp_path_factory.mktemp("uniform_items"))
    for split, n in (("train", 120), ("t10k", 60)):
        labels = np.arange(n) % 10
        images = np.stack([np.full((28, 28), _value(k), np.uint8) for k in labels])
        write_split(d, split, images, labels)
    return d


def _classes(pixels: jax.Array) -> jax.Array:
    """The class a brightness names (CONFUSED swapped), 10 for background."""
    value = pixels * 255.0
    k = jnp.clip(jnp.round((value - 40) / 20), 0, 9).astype(jnp.int32)
    for true, wrong in CONFUSED.items():
        k = jnp.where(k == true, wrong, k)
    return jnp.where(value > 20, k, 10)


class Tower(nnx.Module):
    """Each patch's token names the class of its mean brightness (the background its own)."""

    def __call__(self, images: jax.Array) -> dict:
        b, h, w, _ = images.shape
        cells = images[..., 0].reshape(b, h // PATCH, PATCH, w // PATCH, PATCH).mean((2, 4))
        return {"tokens": jax.nn.one_hot(_classes(cells).reshape(b, -1), 11)}


class Identity(nnx.Module):
    def __call__(self, x: jax.Array) -> jax.Array:
        return x


class PlantedDense(nnx.Module):
    """A two-tower stand-in: patch tokens name classes (Tower), the image embedding the class
    of the centre pixel, texts the class the tokenizer found."""

    def __init__(self):
        self.image, self.image_proj = Tower(), Identity()

    def encode_image_tokens(self, images: jax.Array) -> jax.Array:
        return self.image_proj(self.image(images)["tokens"])

    def encode_image(self, images: jax.Array) -> jax.Array:
        return jax.nn.one_hot(_classes(images[:, images.shape[1] // 2, images.shape[2] // 2, 0]),
                              11)

    def encode_text(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
        return jax.nn.one_hot(ids[:, 0], 11)


@pytest.fixture(scope="module")
def ctx(data_dir):
    config = {"data": {"dir": data_dir, "image_mean": 0.0, "image_std": 1.0},
              "model": {"name": "two_tower", "image": {"image_size": SIZE, "channels": 1}}}
    return make_eval_context(config, graphdef=nnx.split(PlantedDense())[0],
                             tokenizer=ClassIdTokenizer(OBJECTS), context_length=4,
                             mesh=make_mesh({"data": -1, "fsdp": 1, "tensor": 1}),
                             rules=(("batch", ("data", "fsdp")),))


def _bilinear(grid: np.ndarray, size: int) -> np.ndarray:
    """[g, g, k] -> [size, size, k] with half-pixel centres, edges clamped (F.interpolate's
    align_corners=False)."""
    g = grid.shape[0]
    src = np.clip((np.arange(size) + 0.5) * g / size - 0.5, 0, g - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, g - 1)
    t = src - lo
    rows = grid[lo] * (1 - t)[:, None, None] + grid[hi] * t[:, None, None]
    return rows[:, lo] * (1 - t)[None, :, None] + rows[:, hi] * t[None, :, None]


def _expected(data_dir: str, n: int, top_1: bool = False, null: bool = False
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, predicted with background, best object class) of the first n test canvases,
    from the masks: each cell's class (CONFUSED swapped) as one-hot scores, upsampled; with
    `top_1` only the class of the canvas's centre pixel (the planted image-level prediction)
    may win, others scoring -1e4 (every class when the centre is background: all tie at 0);
    with `null` a pixel is background where the empty cells' upsampled share beats every
    class (a learned null embedding), else where the best class scores below 0.5."""
    source = open_dense_source("fashion_mnist_scenes_grid", "test", data_dir,
                               {"image_size": SIZE, "channels": 1}, limit=n)
    _, masks = source.rows(np.arange(n))
    labels, predicted, best = [], [], []
    for mask in masks:
        cells = mask.reshape(2, PATCH, 2, PATCH).max(axis=(1, 3))  # a cell is one item or empty
        onehot = np.zeros((2, 2, 11))
        for (r, c), value in np.ndenumerate(cells):
            onehot[r, c, 10] = value == 0
            if value:
                k = CONFUSED.get(value - 1, value - 1)
                onehot[r, c, k] = 1.0
        centre = mask[SIZE // 2, SIZE // 2]
        if top_1 and centre:
            keep = CONFUSED.get(centre - 1, centre - 1)
            onehot[..., np.flatnonzero(np.arange(10) != keep)] = -1e4
        scores = _bilinear(onehot, SIZE)
        scores, empty = scores[..., :10], scores[..., 10]
        top = scores.argmax(-1)
        predicted.append(np.where((scores.max(-1) < empty) if null else
                                  (scores.max(-1) < 0.5), 0, top + 1))
        labels.append(mask)
        best.append(top)
    return np.stack(labels), np.stack(predicted), np.stack(best)


def _iou(labels: np.ndarray, predicted: np.ndarray, k: int) -> float:
    union = np.sum((labels == k) | (predicted == k))
    return np.sum((labels == k) & (predicted == k)) / union if union else np.nan


def test_windows_cover_the_canvas_flush_with_its_edges():
    assert windows((16, 16), 16, 8) == [(0, 0)]
    assert windows((16, 40), 16, 10) == [(0, 0), (0, 10), (0, 20), (0, 24)]
    with pytest.raises(DataError, match="smaller than the 16-pixel window"):
        windows((8, 40), 16, 8)


def test_segmentation_of_a_planted_model_matches_numpy(ctx, data_dir, tmp_path):
    n = 20
    evaluator = DenseSegmentation({"dataset": "fashion_mnist_scenes_grid", "num_images": n,
                                   "batch_size": 8, "background": "threshold", "threshold": 0.5,
                                   "overlays": 2, "overlay_dir": str(tmp_path)}, ctx)
    metrics = evaluator.run({})
    labels, predicted, best = _expected(data_dir, n)
    ious = [_iou(labels, predicted, k) for k in range(11)]
    assert metrics["tokens/miou"] == pytest.approx(np.nanmean(ious))
    assert metrics["tokens/pixel_acc"] == pytest.approx(np.mean(labels == predicted))
    for k, name in enumerate(scene_vocabulary()["classnames"]):
        if not np.isnan(ious[k]):
            assert metrics[f"tokens/iou/{name}"] == pytest.approx(ious[k]), name
    assert "tokens/iou/dress" not in metrics or metrics["tokens/iou/dress"] == 0.0
    fg = labels > 0
    fg_ious = [_iou(labels[fg] - 1, best[fg], k) for k in range(10)]
    assert metrics["tokens/miou_fg"] == pytest.approx(np.nanmean(fg_ious))
    assert metrics["tokens/pixel_acc_fg"] == pytest.approx(np.mean(labels[fg] - 1 == best[fg]))
    assert metrics["tokens/background_threshold"] == 0.5
    assert sorted(os.listdir(tmp_path)) == [f"fashion_mnist_scenes_grid_test_00{i}_tokens.png"
                                            for i in range(2)]


def test_model_background_reads_the_sigmoid_the_family_names(ctx, data_dir):
    """background="model": the threshold where the family's patch sigmoid is 1/2, from the
    parameters its `patch_sigmoid` names (patch_phrase: the phrase scale and bias)."""
    options = {"dataset": "fashion_mnist_scenes_grid", "num_images": 16, "batch_size": 8}
    fixed = DenseSegmentation({**options, "background": "threshold", "threshold": 0.5},
                              ctx).run({})
    planted = PlantedDense()
    planted.phrase_logit_scale = nnx.Param(jnp.log(4.0))
    planted.phrase_logit_bias = nnx.Param(jnp.float32(-2.0))
    graphdef, state = nnx.split(planted)
    local = dataclasses.replace(ctx, model=dataclasses.replace(
        ctx.model, graphdef=graphdef, patch_sigmoid=("phrase_logit_scale", "phrase_logit_bias")))
    params = nnx.to_pure_dict(state)
    metrics = DenseSegmentation({**options, "background": "model"}, local).run(params)
    assert metrics["tokens/background_threshold"] == pytest.approx(0.5)
    assert metrics["tokens/miou"] == pytest.approx(fixed["tokens/miou"])
    plain = dataclasses.replace(local, model=dataclasses.replace(
        local.model, patch_sigmoid=ctx.model.patch_sigmoid))
    with pytest.raises(ConfigError, match="'logit_bias'"):
        DenseSegmentation({**options, "background": "model"}, plain).run(params)


def test_model_background_reads_the_null_embedding_the_family_names(ctx, data_dir):
    """background="model" with a learned null (patch_phrase's null_phrase): a pixel is
    background where its patch is closer to the normalised null than to every class (the
    planted empty cells' token is the null direction), against NumPy."""
    n = 16
    options = {"dataset": "fashion_mnist_scenes_grid", "num_images": n, "batch_size": 8}
    planted = PlantedDense()
    planted.null_phrase = nnx.Param(3.0 * jax.nn.one_hot(10, 11))  # normalised by the evaluator
    graphdef, state = nnx.split(planted)
    local = dataclasses.replace(ctx, model=dataclasses.replace(
        ctx.model, graphdef=graphdef, patch_null="null_phrase"))
    metrics = DenseSegmentation({**options, "background": "model"}, local).run(
        nnx.to_pure_dict(state))
    labels, predicted, _ = _expected(data_dir, n, null=True)
    assert metrics["tokens/miou"] == pytest.approx(
        np.nanmean([_iou(labels, predicted, k) for k in range(11)]))
    assert metrics["tokens/pixel_acc"] == pytest.approx(np.mean(labels == predicted))
    assert not np.array_equal(predicted, _expected(data_dir, n)[1])  # not the 0.5 threshold
    assert "tokens/background_threshold" not in metrics  # no threshold: the null decides


def test_prompt_denoising_keeps_the_image_level_top_classes(ctx, data_dir):
    n = 24
    metrics = DenseSegmentation({"dataset": "fashion_mnist_scenes_grid", "num_images": n,
                                 "batch_size": 8, "background": "threshold", "threshold": 0.5,
                                 "image_top_k": 1}, ctx).run({})
    labels, predicted, best = _expected(data_dir, n, top_1=True)
    assert metrics["tokens/miou"] == pytest.approx(
        np.nanmean([_iou(labels, predicted, k) for k in range(11)]))
    fg = labels > 0
    assert metrics["tokens/pixel_acc_fg"] == pytest.approx(np.mean(labels[fg] - 1 == best[fg]))
    plain = DenseSegmentation({"dataset": "fashion_mnist_scenes_grid", "num_images": n,
                               "batch_size": 8, "background": "threshold"}, ctx).run({})
    assert metrics["tokens/miou"] < plain["tokens/miou"]  # the planted model names every item


def test_calibrated_background_is_chosen_on_the_validation_split(ctx, data_dir):
    evaluator = DenseSegmentation({"dataset": "fashion_mnist_scenes_grid", "num_images": 16,
                                   "batch_size": 8, "background": "calibrated",
                                   "calibration_images": 16}, ctx)
    metrics = evaluator.run({})
    # Best scores are 0 (background cells), ~0.5 at item borders and 1 inside items: any
    # threshold in (0, ~0.44] separates them as the fixed 0.5 does on these canvases' insides.
    assert 0 < metrics["tokens/background_threshold"] <= 0.5625
    fixed = DenseSegmentation({"dataset": "fashion_mnist_scenes_grid", "num_images": 16,
                               "batch_size": 8, "background": "none"}, ctx).run({})
    assert fixed["tokens/miou"] < metrics["tokens/miou"]  # never background: its IoU is 0
    assert fixed["tokens/miou_fg"] == pytest.approx(metrics["tokens/miou_fg"])


def test_region_classification_of_a_planted_model(ctx, data_dir):
    n = 24
    evaluator = RegionClassification({"dataset": "fashion_mnist_scenes_grid", "num_images": n,
                                      "batch_size": 8, "methods": ("crop", "tokens"),
                                      "crop_scales": (1.0,)}, ctx)
    metrics = evaluator.run({})
    source = open_dense_source("fashion_mnist_scenes_grid", "test", data_dir,
                               {"image_size": SIZE, "channels": 1}, limit=n)
    labels = np.concatenate([classes for _, classes in source.boxes(np.arange(n))]) - 1
    predicted = np.asarray([CONFUSED.get(k, k) for k in labels])
    for method in ("crop", "tokens"):
        assert metrics[f"{method}/acc1"] == pytest.approx(np.mean(predicted == labels))
        recalls = [np.mean(predicted[labels == k] == k) for k in np.unique(labels)]
        assert metrics[f"{method}/mean_per_class_recall"] == pytest.approx(np.mean(recalls))


def test_crop_and_patch_weight_geometry():
    image = np.arange(100, dtype=np.uint8).reshape(10, 10, 1)
    crop = square_crop(image, np.array([2, 4, 6, 6]), 1.0, 4)  # a 4x4 square around (4, 5)
    np.testing.assert_array_equal(crop[..., 0], image[3:7, 2:6, 0])
    edge = square_crop(image, np.array([0, 0, 2, 2]), 2.0, 4)  # half of it past the canvas
    np.testing.assert_array_equal(edge[:1, :, 0], 0)
    weights = patch_weights(np.array([[0, 0, 8, 8], [4, 0, 12, 8]]), (16, 16), 2)
    np.testing.assert_allclose(weights, [[1, 0, 0, 0], [0.5, 0.5, 0, 0]])


def test_bad_inputs_fail_in_one_line(ctx, data_dir, tiny_config, tmp_path):
    from vlmjax.config.validate import validate
    base = {"kind": "dense_segmentation", "dataset": "fashion_mnist_scenes", "batch_size": 8}
    tiny_config.data.dir = data_dir
    tiny_config.evals = {"dense": base}
    tiny_config.model.image.update(image_size=16, patch_size=8)
    validate(tiny_config, 8, training=False)
    coca = load_config_file(os.path.join(REPO, "configs", "test", "tiny_coca.py"))
    coca.data.dir, coca.evals = data_dir, {"dense": base}
    coca.model.image.update(image_size=16, patch_size=8)
    with pytest.raises(ConfigError, match="needs a model with image tokens .* model.name='coca'"):
        validate(coca, 8, training=False)
    for key, value, match in (
            ("methods", ("tokens", "clearclip"), "has 'clearclip'"),
            ("methods", (), "is empty"),
            ("background", "otsu", "background is 'otsu'"),
            ("dataset", "voc2012_segmentation", "not prepared .* prepare it with: .*dense_builders"),
            ("dataset", "cifar10", "has no masks or boxes")):
        tiny_config.evals = {"dense": {**base, key: value}}
        with pytest.raises((ConfigError, DataError), match=match):
            validate(tiny_config, 8, training=False)
    tiny_config.evals = {"dense": {**base, "kind": "region_classification", "methods": ("box",)}}
    with pytest.raises(ConfigError, match="methods is"):
        validate(tiny_config, 8, training=False)
    with pytest.raises(ConfigError, match="no background class; use background='none'"):
        DenseSegmentation({"dataset": "fashion_mnist_scenes", "batch_size": 8,
                           "background": "threshold"}, _no_background(ctx, data_dir))


def _no_background(ctx, data_dir):
    """The context whose dense sources report no background class."""
    class Source:
        def __init__(self, inner):
            self.inner, self.background = inner, -1

        def __getattr__(self, name):
            return getattr(self.inner, name)

    class Context:
        def __getattr__(self, name):
            return getattr(ctx, name)

        def open_dense_source(self, *args, **kwargs):
            return Source(ctx.open_dense_source(*args, **kwargs))
    return Context()
