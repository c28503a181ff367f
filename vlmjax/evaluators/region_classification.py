"""Zero-shot region classification: name the class of every ground-truth box (ViLD, RegionCLIP).

Methods (`methods`):
- "crop" (ViLD's baseline): each box is cropped from the canvas as a square of
  `crop_scale` x its longer side around its centre (zero padding past the canvas), resized to
  the model's image size and classified like a zero-shot image; with several `crop_scales` the
  class scores are averaged (ViLD ensembles 1x and 1.5x crops);
- a dense method of `models.dense` ("tokens", "maskclip", "sclip"): RoI pooling of the
  canvas's per-patch embeddings, each patch weighted by the share of the box it covers
  (`evaluators.dense_scoring.region_scores`), then classified.
A canvas of another size than the model's is resized to it (boxes scaled alike). Reports per
method top-1 accuracy over boxes and the box-level mean per-class recall.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image

from vlmjax.errors import ConfigError, DataError
from vlmjax.evaluators.context import EvalContext, EvalFacts
from vlmjax.evaluators.dense_scoring import DensePrompts, region_scores
from vlmjax.evaluators.global_batches import padded_global_batch
from vlmjax.evaluators.metrics import classification_metrics
from vlmjax.evaluators.scoring import TOKEN_DIRECTIONS
from vlmjax.evaluators.typed_options import options_from
from vlmjax.models.dense import DENSE_METHODS, check_dense_method, dense_embeddings
from vlmjax.options import fail
from vlmjax.parallel.mesh import batch_shards, replicated

METHODS = ("crop", *DENSE_METHODS)


@dataclasses.dataclass(frozen=True)
class Options:
    """config.evals.<name> of kind 'region_classification'."""

    dataset: str = "fashion_mnist_scenes"  # a scene set or a registered benchmark with boxes
    split: str = "test"
    data_dir: str = ""
    batch_size: int = 100  # canvases (and crops) per batch
    num_images: int = 1000  # canvases; 0: the whole split
    methods: tuple[str, ...] = ("crop", "tokens")  # METHODS
    crop_scales: tuple[float, ...] = (1.0, 1.5)
    token_direction: str = "i2t"
    classnames_file: str = ""
    templates_file: str = ""
    # Benchmarks: the resize of their protocol unless positive (shorter side, square canvas).
    short_side: int = 0
    canvas: int = 0


def check(name: str, options: Options, facts: EvalFacts) -> None:
    """Image tokens (for RoI methods), known choices, the data readable (one line each)."""
    o = options
    facts.require_image_tokens(name, "region_classification")
    if not o.methods or any(m not in METHODS for m in o.methods):
        fail(f"evals.{name}.methods", f"is {list(o.methods)}", f"name some of {', '.join(METHODS)}")
    if not o.crop_scales or min(o.crop_scales) <= 0:
        fail(f"evals.{name}.crop_scales", f"is {list(o.crop_scales)}", "use positive scales")
    if o.token_direction not in TOKEN_DIRECTIONS:
        fail(f"evals.{name}.token_direction", f"is {o.token_direction!r}",
             f"choose one of {', '.join(TOKEN_DIRECTIONS)}")
    if o.batch_size <= 0 or o.num_images < 0:
        fail(f"evals.{name}.batch_size", "or num_images is not positive", "use positive sizes")
    facts.check_dense_source(name, o.dataset, o.split, o.data_dir)


def square_crop(image: np.ndarray, box: np.ndarray, scale: float, size: int) -> np.ndarray:
    """uint8 [H, W, c] -> the square of side scale x max(box side) around the box centre,
    zero-padded past the image, resized (bicubic) to [size, size, c]."""
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(x1 - x0, y1 - y0, 1.0) * scale
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left, top = int(round(cx - side / 2)), int(round(cy - side / 2))
    width = max(int(round(side)), 1)
    h, w, c = image.shape
    canvas = np.zeros((width, width, c), image.dtype)
    ys, xs = slice(max(top, 0), min(top + width, h)), slice(max(left, 0), min(left + width, w))
    if ys.start < ys.stop and xs.start < xs.stop:
        canvas[ys.start - top:ys.stop - top, xs.start - left:xs.stop - left] = image[ys, xs]
    pil = Image.fromarray(canvas[..., 0] if c == 1 else canvas)
    out = np.asarray(pil.resize((size, size), Image.BICUBIC))
    return out[..., None] if c == 1 else out


def patch_weights(boxes: np.ndarray, canvas: tuple[int, int], grid: int) -> np.ndarray:
    """float32 [k, grid * grid]: the share of each box's area that each patch cell covers
    (cells tile the canvas row-major), rows summing to 1."""
    h, w = canvas
    ys, xs = np.arange(grid + 1) * h / grid, np.arange(grid + 1) * w / grid
    out = np.zeros((len(boxes), grid, grid), np.float64)
    for i, (x0, y0, x1, y1) in enumerate(np.asarray(boxes, np.float64)):
        over_y = np.clip(np.minimum(ys[1:], y1) - np.maximum(ys[:-1], y0), 0, None)
        over_x = np.clip(np.minimum(xs[1:], x1) - np.maximum(xs[:-1], x0), 0, None)
        out[i] = over_y[:, None] * over_x[None, :]
    total = out.reshape(len(boxes), -1).sum(axis=1, keepdims=True)
    return (out.reshape(len(boxes), -1) / np.maximum(total, 1e-12)).astype(np.float32)


class RegionClassification:
    """Classifies a dense source's ground-truth boxes zero-shot (module doc)."""

    def __init__(self, options: Options | Mapping, ctx: EvalContext):
        self.options = o = options_from(Options, options)
        if any(m not in METHODS for m in o.methods):
            raise ConfigError(f"region methods {list(o.methods)}: choose among {METHODS}")
        if any(m != "crop" for m in o.methods):
            ctx.model.require("image_tokens", "region_classification by RoI pooling",
                              "use methods=('crop',)")
        self.ctx, self.name = ctx, f"region_classification/{o.dataset}"
        self.source = ctx.open_dense_source(o.dataset, o.split, o.data_dir, o.num_images,
                                            o.classnames_file, o.templates_file, o.short_side,
                                            o.canvas)
        if not self.source.has_boxes:
            raise DataError(f"{o.dataset} has no boxes; evaluate it with kind 'dense_segmentation'")
        classnames, background = self.source.classnames, self.source.background
        self.objects = [i for i in range(len(classnames)) if i != background]
        if not self.objects:
            raise DataError(f"{o.dataset} lists no object classes; give a class list")
        self.index = np.full(len(classnames), -1, np.int64)
        self.index[self.objects] = np.arange(len(self.objects))
        self.prompts = DensePrompts(ctx, [classnames[i] for i in self.objects],
                                    self.source.templates, (), o.token_direction)
        normalize, graphdef, scoring, size = ctx.normalize, ctx.graphdef, self.prompts.scoring, \
            ctx.image_size

        def crops(params: dict, images: jax.Array, classifier: Any) -> jax.Array:
            model = nnx.merge(graphdef, params)
            return scoring.class_scores(scoring.image_features(model, normalize(images)), classifier)

        def roi(method: str):
            def scores(params: dict, images: jax.Array, weights: jax.Array, classifier: Any
                       ) -> jax.Array:
                model = nnx.merge(graphdef, params)
                x = normalize(images)
                if x.shape[1:3] != (size, size):
                    x = jax.image.resize(x, (x.shape[0], size, size, x.shape[-1]), "linear")
                patches = dense_embeddings(model, x, method)
                patches = patches.reshape(patches.shape[0], -1, patches.shape[-1])
                return region_scores(scoring, patches, weights, classifier)
            return jax.jit(scores, out_shardings=replicated(ctx.mesh))

        self._crops = jax.jit(crops, out_shardings=replicated(ctx.mesh))
        self._roi = {m: roi(m) for m in o.methods if m != "crop"}

    def _batches(self):
        """Per batch of canvases: (images with boxes, their boxes, object-class indices)."""
        size = self.options.batch_size
        for start in range(0, self.source.num_rows, size):
            rows = np.arange(start, min(start + size, self.source.num_rows))
            kept = []
            for row, (boxes, classes) in zip(rows, self.source.boxes(rows), strict=True):
                index = self.index[np.asarray(classes, np.int64)]
                if np.any(index < 0):
                    raise DataError(f"{self.source.dataset} row {row}: a box is labelled with "
                                    "the background class or a class outside the class list")
                if len(boxes):
                    kept.append((int(row), np.asarray(boxes).reshape(-1, 4), index))
            if kept:
                images, _ = self.source.rows(np.asarray([r for r, _, _ in kept]))
                yield images, [b for _, b, _ in kept], np.concatenate([i for _, _, i in kept])

    def _scores(self, run: Any, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """`run(batch)` over in-memory arrays in global batches, padded rows dropped."""
        n, shards = len(next(iter(arrays.values()))), batch_shards(self.ctx.batch_sharding)
        size, out = -(-self.options.batch_size // shards) * shards, []
        for start in range(0, n, size):
            batch, real = padded_global_batch(arrays, start, size, self.ctx.batch_sharding)
            out.append(np.asarray(run(batch))[:real])
        return np.concatenate(out)

    def run(self, params: dict) -> dict[str, float]:
        """Per method: acc1 and mean_per_class_recall over every box."""
        model = nnx.merge(self.ctx.graphdef, params)
        for method in self._roi:
            check_dense_method(model, method)
        classifier = self.prompts.classifier(params)
        scores: dict[str, list[np.ndarray]] = {m: [] for m in self.options.methods}
        labels = []
        for images, boxes, classes in self._batches():
            labels.append(classes)
            for method in self.options.methods:
                scores[method].append(
                    self._crop_scores(params, images, boxes, classifier) if method == "crop"
                    else self._roi_scores(method, params, images, boxes, classifier))
        if not labels:
            raise DataError(f"{self.source.dataset} {self.source.split} has no boxes to classify")
        labels_all, out = np.concatenate(labels), {}
        for method, parts in scores.items():
            top = np.argsort(-np.concatenate(parts), axis=1, kind="stable")[:, :1]
            metrics = classification_metrics(top, labels_all, len(self.objects))
            out.update({f"{method}/{k}": v for k, v in metrics.items()})
        return out

    def _crop_scores(self, params: dict, images: np.ndarray, boxes: list[np.ndarray],
                     classifier: Any) -> np.ndarray:
        size = self.ctx.image_size
        total = 0.0
        for scale in self.options.crop_scales:
            crops = np.stack([square_crop(images[i], box, scale, size)
                              for i, canvas_boxes in enumerate(boxes) for box in canvas_boxes])
            total = total + self._scores(
                lambda batch: self._crops(params, batch["image"], classifier), {"image": crops})
        return total / len(self.options.crop_scales)

    def _roi_scores(self, method: str, params: dict, images: np.ndarray,
                    boxes: list[np.ndarray], classifier: Any) -> np.ndarray:
        grid = self._grid(params, method, images.shape[-1])
        width = 1 << (max(len(b) for b in boxes) - 1).bit_length()  # padded to a power of two
        weights = np.zeros((len(boxes), width, grid * grid), np.float32)
        for i, canvas_boxes in enumerate(boxes):
            weights[i, :len(canvas_boxes)] = patch_weights(canvas_boxes, self.source.canvas, grid)
        scores = self._scores(lambda batch: self._roi[method](
            params, batch["image"], batch["weights"], classifier),
            {"image": images, "weights": weights})
        return np.concatenate([scores[i, :len(b)] for i, b in enumerate(boxes)])

    def _grid(self, params: dict, method: str, channels: int) -> int:
        """Patch cells per side of the model's dense features (from their abstract shape)."""
        size, graphdef, normalize = self.ctx.image_size, self.ctx.graphdef, self.ctx.normalize
        shape = jax.eval_shape(lambda p, x: dense_embeddings(
            nnx.merge(graphdef, p), normalize(x), method), params,
            jax.ShapeDtypeStruct((1, size, size, channels), jnp.uint8))
        return shape.shape[1]
