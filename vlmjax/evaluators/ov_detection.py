"""Open-vocabulary detection: box AP of a detector over every class of a boxed dataset, reported
for the novel classes (never labelled in training), the base classes and all (ViLD, OWL-ViT).

The detector (`models.ov_detector`, capability "detection") predicts one box per image token;
each token is scored for every class by its class embedding against the class embeddings in
`class_embeddings` (an .npz with "classnames" and "class_embed" [K, e], written by
`python -m vlmjax.train.teacher_targets`: the teacher's template-averaged text embeddings of
the evaluated dataset's classes):
- "softmax" (ViLD): p(class) of the softmax over [background, all K classes];
- "sigmoid" (OWL-ViT): sigmoid of the class logit;
times sigmoid(objectness) with `objectness`. The `top_k` best (token, class) pairs of an image
are its detections (a set predictor: no NMS). AP / AP50 with COCO's definitions (pycocotools,
`evaluators.box_ap`), per subset through params.catIds. A dataset with LVIS's federated
annotations (the source's `frequencies` / `federated`: LVIS v1) is scored by LVIS's federated
protocol instead (`evaluators.lvis_ap`: each class only on the images where it is positive or
verified absent, unmatched detections ignored where it is not exhaustive), with AP / AP50 and
APr / APc / APf (rare / common / frequent classes) per subset. `top_k` 0 is the protocol's
detections per image: 300 for LVIS, 100 for COCO. Canvases of another size than the model's are
resized to it and the boxes scaled back.
"""

import dataclasses
import logging
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vlmjax.data.detection_source import NOVEL_CLASSES
from vlmjax.errors import ConfigError, DataError
from vlmjax.evaluators.box_ap import box_ap, coco_ground_truth
from vlmjax.evaluators.context import EvalContext, EvalFacts
from vlmjax.evaluators.global_batches import padded_global_batch
from vlmjax.evaluators.lvis_ap import Federation, lvis_box_ap
from vlmjax.evaluators.npz_cache import load_npz
from vlmjax.evaluators.typed_options import options_from
from vlmjax.options import fail
from vlmjax.parallel.mesh import batch_shards, replicated

SCORINGS = ("softmax", "sigmoid")
COCO_MAX_DETS, LVIS_MAX_DETS = 100, 300  # the protocols' detections per image
log = logging.getLogger(__name__)
# COCO's open-vocabulary split (OVR-CNN, ViLD): 17 novel classes. Those papers evaluate 48 base
# classes and leave 15 out; here "base" is the other 63 of the 80.
COCO_NOVEL_CLASSES = ("airplane", "bus", "cat", "dog", "cow", "elephant", "umbrella", "tie",
                      "snowboard", "skateboard", "cup", "knife", "cake", "couch", "keyboard",
                      "sink", "scissors")


@dataclasses.dataclass(frozen=True)
class Options:
    """config.evals.<name> of kind 'ov_detection'."""

    dataset: str = "fashion_mnist_scenes"  # a scene set or a registered benchmark with boxes
    split: str = "test"
    data_dir: str = ""
    class_embeddings: str = ""  # .npz: classnames, class_embed [K, e] (teacher_targets)
    novel_classes: tuple[str, ...] = NOVEL_CLASSES  # the training source's default split
    batch_size: int = 100
    num_images: int = 1000  # 0: the whole split
    top_k: int = 0  # detections per image; 0: the protocol's maxDets (COCO 100, LVIS 300)
    scoring: str = "softmax"
    objectness: bool = True
    classnames_file: str = ""
    templates_file: str = ""
    short_side: int = 0
    canvas: int = 0


def check(name: str, options: Options, facts: EvalFacts) -> None:
    """A detector, known choices, the class embeddings and the data readable (one line each)."""
    o = options
    if "detection" not in facts.capabilities:
        fail(f"evals.{name}.kind", f"is 'ov_detection' but model.name={facts.model_name!r} "
             "predicts no boxes", "evaluate an ov_detector run or remove the evaluator")
    if o.scoring not in SCORINGS:
        fail(f"evals.{name}.scoring", f"is {o.scoring!r}", f"choose one of {', '.join(SCORINGS)}")
    if o.batch_size <= 0 or o.num_images < 0 or not 0 <= o.top_k <= LVIS_MAX_DETS:
        fail(f"evals.{name}.batch_size", "/ num_images / top_k out of range",
             f"use positive sizes and top_k in 0..{LVIS_MAX_DETS} (0: the protocol's)")
    if not o.class_embeddings:
        fail(f"evals.{name}.class_embeddings", "is empty", "write the teacher's class "
             "embeddings with `python -m vlmjax.train.teacher_targets` and give the .npz")
    facts.check_dense_source(name, o.dataset, o.split, o.data_dir)


def load_class_embeddings(path: str, classnames: list[str], key: str) -> np.ndarray:
    """float32 [K, e] of `path` (.npz) whose class list must be `classnames` (DataError)."""
    cached = load_npz(path)
    if cached is None or "class_embed" not in cached or "classnames" not in cached:
        raise DataError(f"config.{key}={path!r} is not a class-embedding file; write one with "
                        "`python -m vlmjax.train.teacher_targets --teacher RUN --classes-of "
                        "DATASET`")
    names = [str(c) for c in cached["classnames"]]
    if names != list(classnames):
        raise DataError(f"config.{key}={path!r} embeds the classes {names[:5]}... but the "
                        f"dataset has {list(classnames)[:5]}... ({len(classnames)}); compute "
                        "them for this dataset's class list")
    return np.asarray(cached["class_embed"], np.float32)


def novel_indices(classnames: list[str], novel: tuple[str, ...], key: str) -> list[int]:
    """Indices of the `novel` names in `classnames` (ConfigError naming any that is absent)."""
    missing = [c for c in novel if c not in classnames]
    if missing:
        raise ConfigError(f"config.{key}={list(novel)} names {missing}, not classes of the "
                          f"dataset; choose among {', '.join(classnames)}")
    return sorted(classnames.index(c) for c in novel)


def detection_scores(out: Mapping[str, jax.Array], scoring: str, objectness: bool) -> jax.Array:
    """[b, n, K] class scores of the detector's outputs (module doc)."""
    logits = out["class_logits"]
    if scoring == "softmax":
        full = jnp.concatenate([out["background_logit"][..., None], logits], axis=-1)
        scores = jax.nn.softmax(full, axis=-1)[..., 1:]
    else:
        scores = jax.nn.sigmoid(logits)
    if objectness:
        scores = scores * jax.nn.sigmoid(out["objectness"])[..., None]
    return scores


class OVDetection:
    """Box AP of an open-vocabulary detector on novel / base / all classes (module doc)."""

    def __init__(self, options: Options | Mapping, ctx: EvalContext):
        self.options = o = options_from(Options, options)
        ctx.model.require("detection", "ov_detection", "evaluate an ov_detector run")
        self.ctx, self.name = ctx, f"ov_detection/{o.dataset}"
        self.source = ctx.open_dense_source(o.dataset, o.split, o.data_dir, o.num_images,
                                            o.classnames_file, o.templates_file, o.short_side,
                                            o.canvas)
        if not self.source.has_boxes:
            raise DataError(f"{o.dataset} has no boxes; evaluate it with kind 'dense_segmentation'")
        classnames, background = self.source.classnames, self.source.background
        self.objects = [i for i in range(len(classnames)) if i != background]
        names = [classnames[i] for i in self.objects]
        self.index = np.full(len(classnames), -1, np.int64)
        self.index[self.objects] = np.arange(len(self.objects))
        self.queries = load_class_embeddings(o.class_embeddings, names,
                                             f"evals.{o.dataset}.class_embeddings")
        novel = novel_indices(names, tuple(o.novel_classes), f"evals.{o.dataset}.novel_classes")
        self.subsets = {"novel": novel, "base": [k for k in range(len(names)) if k not in novel],
                        "all": list(range(len(names)))}
        frequencies = self.source.frequencies
        self.frequencies = None if frequencies is None else [frequencies[i] for i in self.objects]
        if self.frequencies is not None and not all(self.frequencies):
            log.warning("%s: %d of %d classes have no LVIS frequency; APr / APc / APf leave "
                        "them out (NaN if all)", o.dataset, self.frequencies.count(""),
                        len(self.frequencies))
        self.max_dets = o.top_k or (COCO_MAX_DETS if self.frequencies is None else LVIS_MAX_DETS)
        graphdef, normalize, size = ctx.graphdef, ctx.normalize, ctx.image_size
        top_k, scoring, use_objectness = self.max_dets, o.scoring, o.objectness

        def detect(params: dict, images: jax.Array, queries: jax.Array) -> dict:
            model = nnx.merge(graphdef, params)
            x = normalize(images)
            if x.shape[1:3] != (size, size):
                x = jax.image.resize(x, (x.shape[0], size, size, x.shape[-1]), "linear")
            out = model.detect(x, queries)
            scores = detection_scores(out, scoring, use_objectness)
            b, n, k = scores.shape
            best, flat = jax.lax.top_k(scores.reshape(b, n * k), min(top_k, n * k))
            boxes = jnp.take_along_axis(out["boxes"], (flat // k)[..., None], axis=1)
            return {"boxes": boxes, "scores": best, "classes": flat % k}

        self._detect = jax.jit(detect, out_shardings=replicated(ctx.mesh))

    def _classes(self, row: int, classes: np.ndarray, what: str) -> np.ndarray:
        """Dataset class ids -> indices among the object classes (DataError for others)."""
        index = self.index[np.asarray(classes, np.int64).reshape(-1)]
        if np.any(index < 0):
            raise DataError(f"{self.source.dataset} row {row}: {what} is the background class "
                            "or a class outside the class list")
        return index

    def _ground_truth(self, rows: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        boxes, labels = [], []
        for row, (row_boxes, classes) in zip(rows, self.source.boxes(rows), strict=True):
            boxes.append(np.asarray(row_boxes, np.float64).reshape(-1, 4))
            labels.append(self._classes(row, classes, "a box's label"))
        return boxes, labels

    def _federated(self, rows: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per row, the negative and the not-exhaustive classes as object-class indices."""
        negative, not_exhaustive = [], []
        for row, (neg, partial) in zip(rows, self.source.federated(rows), strict=True):
            negative.append(self._classes(row, neg, "a negative class"))
            not_exhaustive.append(self._classes(row, partial, "a not-exhaustive class"))
        return negative, not_exhaustive

    def detections(self, params: dict, rows: np.ndarray) -> np.ndarray:
        """float [N, 7] (image row, x0, y0, x1, y1 in canvas pixels, score, class index)."""
        images, _ = self.source.rows(rows)
        h, w = self.source.canvas
        shards = batch_shards(self.ctx.batch_sharding)
        size = -(-self.options.batch_size // shards) * shards
        queries = jax.device_put(jnp.asarray(self.queries), replicated(self.ctx.mesh))
        out = []
        for start in range(0, len(rows), size):
            batch, real = padded_global_batch({"image": images}, start, size,
                                              self.ctx.batch_sharding)
            got = jax.device_get(self._detect(params, batch["image"], queries))
            boxes = np.asarray(got["boxes"], np.float64)[:real] * np.array([w, h, w, h])
            boxes = np.clip(boxes, 0, [w, h, w, h])
            ids = np.broadcast_to(rows[start:start + real, None], got["scores"][:real].shape)
            out.append(np.concatenate([ids[..., None], boxes, np.asarray(
                got["scores"])[:real, :, None], np.asarray(got["classes"])[:real, :, None]],
                axis=-1).reshape(-1, 7))
        return np.concatenate(out) if out else np.zeros((0, 7))

    def run(self, params: dict) -> dict[str, float]:
        """{novel, base, all}/{ap, ap50} over the first num_images canvases, and /{apr, apc,
        apf} where the dataset is federated (LVIS)."""
        rows = np.arange(self.source.num_rows)
        boxes, labels, negative, not_exhaustive = [], [], [], []
        dets = []
        for start in range(0, len(rows), self.options.batch_size):
            chunk = rows[start:start + self.options.batch_size]
            b, lab = self._ground_truth(chunk)
            boxes += b
            labels += lab
            if self.frequencies is not None:
                neg, partial = self._federated(chunk)
                negative += neg
                not_exhaustive += partial
            dets.append(self.detections(params, chunk))
        if not sum(len(b) for b in boxes):
            raise DataError(f"{self.source.dataset} {self.source.split} has no boxes")
        gt = coco_ground_truth(boxes, labels, len(self.objects))
        if self.frequencies is None:
            return box_ap(gt, np.concatenate(dets), self.subsets, self.max_dets)
        federation = Federation(negative, not_exhaustive, self.frequencies)
        return lvis_box_ap(gt, np.concatenate(dets), federation, self.subsets, self.max_dets)
