"""Open-vocabulary segmentation: mIoU of a segmenter over every class of a dense dataset,
reported for the novel classes (never labelled in training), the base classes and all
(MaskCLIP+, ZS3Net's protocol on the scenes).

The segmenter (`models.ov_segmenter`, capability "segmentation") scores each pixel against
[background, the K classes of `class_embeddings`] (an .npz with "classnames" and "class_embed"
[K, e]: the teacher's template-averaged text embeddings, e.g. the pseudo-label file of
`python -m vlmjax.train.teacher_pseudo_labels`, or `python -m vlmjax.train.teacher_targets
--classes_of DATASET` for a benchmark); a pixel's prediction is its best entry (a dataset
without a background class, ADE20K, is scored over its classes only). Canvases of another size
than the model's are resized to it and the logits back.
Against the ground-truth masks, over the whole split (`evaluators.dense_metrics`), metrics are
(`split_metrics`): "novel/miou" and "base/miou" the mean IoU of the novel and base object
classes, "hiou" their harmonic mean (ZS3Net / MaskCLIP+), "all/miou" the mean over every class
with background (the usual mIoU), "background_iou", "pixel_acc" and "iou/<class>". The
teacher's own training-free dense zero-shot is scored by the same `split_metrics`
(`train.teacher_pseudo_labels.teacher_baseline`).
"""

import dataclasses
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vlmjax.data.detection_source import NOVEL_CLASSES
from vlmjax.errors import DataError
from vlmjax.evaluators.context import EvalContext, EvalFacts
from vlmjax.evaluators.dense_metrics import confusion, iou_per_class
from vlmjax.evaluators.global_batches import padded_global_batch
from vlmjax.evaluators.ov_detection import load_class_embeddings, novel_indices
from vlmjax.evaluators.typed_options import options_from
from vlmjax.options import fail
from vlmjax.parallel.mesh import batch_shards, replicated


@dataclasses.dataclass(frozen=True)
class Options:
    """config.evals.<name> of kind 'ov_segmentation'."""

    dataset: str = "fashion_mnist_scenes"  # a scene set or a registered benchmark with masks
    split: str = "test"
    data_dir: str = ""
    class_embeddings: str = ""  # .npz: classnames, class_embed [K, e]
    novel_classes: tuple[str, ...] = NOVEL_CLASSES
    batch_size: int = 100
    num_images: int = 1000  # 0: the whole split
    classnames_file: str = ""
    templates_file: str = ""
    short_side: int = 0
    canvas: int = 0


def _mean(values: np.ndarray) -> float:
    return float(np.nanmean(values)) if np.any(~np.isnan(values)) else float("nan")


def split_metrics(matrix: np.ndarray, classnames: Sequence[str], novel: Sequence[int],
                  background: int) -> dict[str, float]:
    """Novel / base / all mIoU, hIoU, background IoU, pixel accuracy and per-class IoU of a
    confusion matrix over `classnames` (module doc); `novel`: indices into `classnames`."""
    iou = iou_per_class(matrix)
    objects = [i for i in range(len(classnames)) if i != background]
    base = [i for i in objects if i not in set(novel)]
    novel_miou, base_miou = _mean(iou[list(novel)]), _mean(iou[base])
    total = float(np.asarray(matrix).sum())
    out = {"novel/miou": novel_miou, "base/miou": base_miou, "all/miou": _mean(iou),
           "hiou": (2 * novel_miou * base_miou / (novel_miou + base_miou)
                    if novel_miou + base_miou > 0 else 0.0),
           "pixel_acc": float(np.trace(matrix)) / total if total else float("nan")}
    if background >= 0:
        out["background_iou"] = float(iou[background])
    out.update({f"iou/{classnames[i]}": float(iou[i]) for i in objects if not np.isnan(iou[i])})
    return out


def check(name: str, options: Options, facts: EvalFacts) -> None:
    """A segmenter, sizes, the class embeddings named and the data readable (one line each)."""
    o = options
    if "segmentation" not in facts.capabilities:
        fail(f"evals.{name}.kind", f"is 'ov_segmentation' but model.name={facts.model_name!r} "
             "predicts no masks", "evaluate an ov_segmenter run or use kind 'dense_segmentation'")
    if o.batch_size <= 0 or o.num_images < 0:
        fail(f"evals.{name}.batch_size", "/ num_images out of range", "use positive sizes")
    if not o.class_embeddings:
        fail(f"evals.{name}.class_embeddings", "is empty", "give the teacher's pseudo-label "
             "file (python -m vlmjax.train.teacher_pseudo_labels) or class-embedding .npz")
    facts.check_dense_source(name, o.dataset, o.split, o.data_dir)


class OVSegmentation:
    """Novel / base / all mIoU of an open-vocabulary segmenter (module doc)."""

    def __init__(self, options: Options | Mapping, ctx: EvalContext):
        self.options = o = options_from(Options, options)
        ctx.model.require("segmentation", "ov_segmentation", "evaluate an ov_segmenter run")
        self.ctx, self.name = ctx, f"ov_segmentation/{o.dataset}"
        self.source = ctx.open_dense_source(o.dataset, o.split, o.data_dir, o.num_images,
                                            o.classnames_file, o.templates_file, o.short_side,
                                            o.canvas)
        if not self.source.has_masks:
            raise DataError(f"{o.dataset} has boxes but no masks; evaluate it with kind "
                            "'ov_detection'")
        classnames, background = self.source.classnames, self.source.background
        self.objects = [i for i in range(len(classnames)) if i != background]
        names = [classnames[i] for i in self.objects]
        self.queries = load_class_embeddings(o.class_embeddings, names,
                                             f"evals.{o.dataset}.class_embeddings")
        novel = novel_indices(names, tuple(o.novel_classes), f"evals.{o.dataset}.novel_classes")
        self.novel = [self.objects[k] for k in novel]
        # Logit v: background (v = 0), then the object classes in order -> dataset class ids;
        # a dataset without a background class (ADE20K) is scored over its classes only.
        first = 0 if background >= 0 else 1
        self.to_class = np.asarray([background, *self.objects][first:])
        graphdef, normalize, size = ctx.graphdef, ctx.normalize, ctx.image_size

        def predict(params: dict, images: jax.Array, queries: jax.Array) -> jax.Array:
            model = nnx.merge(graphdef, params)
            x = normalize(images)
            h, w = x.shape[1:3]
            if (h, w) != (size, size):
                x = jax.image.resize(x, (x.shape[0], size, size, x.shape[-1]), "linear")
            logits = model.segment(x, queries)
            if (h, w) != (size, size):
                logits = jax.image.resize(logits, (x.shape[0], h, w, logits.shape[-1]), "linear")
            return jnp.argmax(logits[..., first:], axis=-1).astype(jnp.int32)

        self._predict = jax.jit(predict, out_shardings=replicated(ctx.mesh))

    def predictions(self, params: dict, images: np.ndarray) -> np.ndarray:
        """uint8 canvases [n, H, W, c] -> dataset class ids [n, H, W]."""
        shards = batch_shards(self.ctx.batch_sharding)
        size = -(-self.options.batch_size // shards) * shards
        queries = jax.device_put(jnp.asarray(self.queries), replicated(self.ctx.mesh))
        out = []
        for start in range(0, len(images), size):
            batch, real = padded_global_batch({"image": images}, start, size,
                                              self.ctx.batch_sharding)
            out.append(np.asarray(jax.device_get(self._predict(params, batch["image"],
                                                               queries)))[:real])
        return self.to_class[np.concatenate(out)]

    def run(self, params: dict) -> dict[str, float]:
        """`split_metrics` over the first num_images canvases."""
        classnames = self.source.classnames
        matrix = np.zeros((len(classnames),) * 2, np.int64)
        for start in range(0, self.source.num_rows, self.options.batch_size):
            rows = np.arange(start, min(start + self.options.batch_size, self.source.num_rows))
            images, masks = self.source.rows(rows)
            matrix += confusion(masks, self.predictions(params, images), len(classnames))
        return split_metrics(matrix, classnames, self.novel, self.source.background)
