"""Zero-shot semantic segmentation: every pixel gets the class whose prompts its patch matches.

For each dense method (`models.dense`: projected tokens, MaskCLIP's value path, SCLIP's
correlative attention) the canvas is covered by windows of the model's image size (one window
when they are equal; else `stride` apart, SCLIP's sliding-window inference), each window's
per-patch class scores (`evaluators.dense_scoring`) are upsampled bilinearly to its pixels and
overlapping windows averaged. A pixel's object class is its best-scoring class; whether it is
background is decided by a rule (`background`, `evaluators.dense_background`): never ("none"),
its best score (cosine, softmax probability at `softmax_scale`, or "logit": the patch
embedding before normalisation times the class embedding) below `threshold` (MaskCLIP's
bg_thresh), a background prompt outscoring every class ("prompts", MaskCLIP's extra
background categories), the model's own sigmoid at 1/2 ("model": SigLIP's learned bias), a
threshold calibrated to maximise mIoU on `calibration_split` ("calibrated": the scenes'
held-out "val" canvases, never the split evaluated), or a logistic rule on the best score, the
patch norm and the prompt margin fit on that split ("learned").
`image_top_k` > 0 keeps, per window, only the classes its image-level zero-shot ranks in the
top k (MaskCLIP's prompt denoising with its class-token predictions). Reports per method mIoU
and pixel accuracy with background and foreground only
(`evaluators.dense_metrics`), per-class IoU, and writes PNG overlays of the first `overlays`
canvases (image | truth | prediction) to `overlay_dir`.
"""

import dataclasses
import logging
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image
from tqdm import tqdm

from vlmjax.data.prefetch import process_rows, to_global
from vlmjax.errors import ConfigError, DataError
from vlmjax.evaluators.context import EvalContext, EvalFacts
from vlmjax.evaluators.dense_background import (
    FEATURES,
    BackgroundRule,
    decision_features,
    fit_rule,
)
from vlmjax.evaluators.dense_metrics import IGNORE, confusion, foreground_labels, segmentation_metrics
from vlmjax.evaluators.dense_scoring import DensePrompts, patch_scores
from vlmjax.evaluators.global_batches import replicate
from vlmjax.evaluators.scoring import TOKEN_DIRECTIONS, EmbeddingScoring
from vlmjax.evaluators.typed_options import options_from
from vlmjax.models.dense import DENSE_METHODS, check_dense_method, dense_embeddings
from vlmjax.options import fail
from vlmjax.parallel.mesh import replicated

log = logging.getLogger(__name__)
BACKGROUNDS = ("none", "threshold", "prompts", "calibrated", "model", "learned")
FITTED = ("calibrated", "learned")  # rules fit on the calibration split
SCORES = ("cosine", "probability", "logit")
SUPPRESSED = -1e4  # the score of a class prompt denoising removed (finite: windows average it)


@dataclasses.dataclass(frozen=True)
class Options:
    """config.evals.<name> of kind 'dense_segmentation'."""

    dataset: str = "fashion_mnist_scenes"  # a scene set or a registered dense benchmark
    split: str = "test"
    data_dir: str = ""
    batch_size: int = 100  # canvases per batch
    num_images: int = 1000  # 0: the whole split
    methods: tuple[str, ...] = ("tokens",)  # models.dense.DENSE_METHODS
    background: str = "calibrated"  # BACKGROUNDS (module doc)
    threshold: float = 0.5  # background="threshold"
    score: str = "cosine"  # what a threshold compares: cosine | probability | logit
    softmax_scale: float = 100.0  # score="probability": softmax(scale * cosine) over classes
    calibration_split: str = "val"
    calibration_images: int = 300
    stride: int = 0  # sliding-window stride; 0: half the model's image size
    # MaskCLIP's prompt denoising (its top-k text classes): only the k classes the whole window
    # scores best (image-level zero-shot) may label its pixels; 0: every class.
    image_top_k: int = 0
    token_direction: str = "i2t"  # token-wise models: i2t | t2i | mean
    classnames_file: str = ""
    templates_file: str = ""
    # Benchmarks: the resize of their protocol unless positive (shorter side, square canvas).
    short_side: int = 0
    canvas: int = 0
    overlays: int = 0  # PNG overlays of the first canvases (with overlay_dir)
    overlay_dir: str = ""


def check(name: str, options: Options, facts: EvalFacts) -> None:
    """Image tokens, known choices, the data readable at the model's size (one line each)."""
    o = options
    facts.require_image_tokens(name, "dense_segmentation")
    if not o.methods:
        fail(f"evals.{name}.methods", "is empty", f"name some of {', '.join(DENSE_METHODS)}")
    for method in o.methods:
        if method not in DENSE_METHODS:
            fail(f"evals.{name}.methods", f"has {method!r}", f"use {', '.join(DENSE_METHODS)}")
    for key, value, choices in (("background", o.background, BACKGROUNDS),
                                ("score", o.score, SCORES),
                                ("token_direction", o.token_direction, TOKEN_DIRECTIONS)):
        if value not in choices:
            fail(f"evals.{name}.{key}", f"is {value!r}", f"choose one of {', '.join(choices)}")
    if o.background == "model" and o.score != "cosine":
        fail(f"evals.{name}.score", "must be 'cosine' with background='model'",
             "set score='cosine' (the model's sigmoid reads cosines)")
    if min(o.num_images, o.stride, o.overlays, o.image_top_k) < 0 or o.batch_size <= 0:
        fail(f"evals.{name}", "has a negative or zero size (batch_size, num_images, stride, "
             "overlays, image_top_k)", "use batch_size > 0 and non-negative others")
    if o.overlays and not o.overlay_dir:
        fail(f"evals.{name}.overlay_dir", "is empty but overlays > 0", "name a directory")
    facts.check_dense_source(name, o.dataset, o.split, o.data_dir)
    if o.background in FITTED:
        facts.check_dense_source(name, o.dataset, o.calibration_split, o.data_dir)


def loaded_dense_batch(load_rows: Any, num_rows: int, start: int, batch_size: int,
                       sharding: Any) -> tuple[dict, int]:
    """Global batch {"image", "mask"} of rows [start, start + batch_size): each process loads
    only its devices' rows; past `num_rows` images are zero and masks IGNORE."""
    real = min(batch_size, num_rows - start)
    mine = np.arange(batch_size)[process_rows(sharding, batch_size)]
    images, masks = load_rows(start + mine[mine < real])
    pad = len(mine) - len(images)
    if pad:
        images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
        masks = np.concatenate([masks, np.full((pad, *masks.shape[1:]), IGNORE, masks.dtype)])
    return to_global({"image": images, "mask": masks}, sharding), real


def windows(canvas: tuple[int, int], size: int, stride: int) -> list[tuple[int, int]]:
    """Top-left corners of `size` windows covering `canvas`, `stride` apart, the last flush
    with the far edge (a canvas smaller than a window is an error of the source)."""
    def starts(extent: int) -> list[int]:
        if extent < size:
            raise DataError(f"a canvas of {extent} pixels is smaller than the {size}-pixel window")
        out = list(range(0, extent - size + 1, stride))
        return out if out[-1] == extent - size else out + [extent - size]
    return [(y, x) for y in starts(canvas[0]) for x in starts(canvas[1])]


class DenseSegmentation:
    """Zero-shot segmentation of a dense source's canvases (module doc)."""

    def __init__(self, options: Options | Mapping, ctx: EvalContext):
        self.options = o = options_from(Options, options)
        ctx.model.require("image_tokens", "evals kind 'dense_segmentation'",
                          "evaluate a model with per-patch embeddings")
        for method in o.methods:
            if method not in DENSE_METHODS:
                raise ConfigError(f"dense method {method!r} is unknown; use {DENSE_METHODS}")
        # One name per dataset and background decision (several may run side by side).
        suffix = "" if o.background == Options.background else f"/{o.background}"
        self.ctx, self.name = ctx, f"dense_segmentation/{o.dataset}{suffix}"
        self.source = ctx.open_dense_source(o.dataset, o.split, o.data_dir, o.num_images,
                                            o.classnames_file, o.templates_file, o.short_side,
                                            o.canvas)
        if not self.source.has_masks:
            raise DataError(f"{o.dataset} has boxes but no masks; evaluate it with kind "
                            "'region_classification'")
        classnames, background = self.source.classnames, self.source.background
        self.objects = [i for i in range(len(classnames)) if i != background]
        if not self.objects:
            raise DataError(f"{o.dataset} lists no object classes; give a class list")
        if o.background != "none" and background < 0:
            raise ConfigError(f"evals background={o.background!r} but {o.dataset} has no "
                              "background class; use background='none'")
        extra = self.source.background_prompts if o.background in ("prompts", "learned") else []
        if o.background == "prompts" and not extra:
            raise DataError(f"{o.dataset} has no background prompts; use another background")
        self.prompts = DensePrompts(ctx, [classnames[i] for i in self.objects],
                                    self.source.templates, extra, o.token_direction)
        if o.score == "logit" and ctx.model.scoring != "embedding":
            raise ConfigError(f"evals score='logit' reads patch embeddings before normalisation; "
                              f"the {ctx.model.scoring} scoring of {ctx.model.name} compares "
                              "normalised tokens: use score='cosine'")
        self.source.rows(np.arange(min(1, self.source.num_rows)))  # masks checked before compiling
        self.calibration = None
        if o.background in FITTED:
            self.calibration = ctx.open_dense_source(o.dataset, o.calibration_split, o.data_dir,
                                                     o.calibration_images, o.classnames_file,
                                                     o.templates_file, o.short_side, o.canvas)
        self._predict = {m: self._build(m) for m in o.methods}

    def _build(self, method: str) -> Any:
        """The jitted (params, uint8 canvases, classifier) -> per pixel the best object class
        and the decision features [..., F] (`dense_background.FEATURES`)."""
        o, ctx = self.options, self.ctx
        size, num_objects = ctx.image_size, len(self.objects)
        corners = windows(self.source.canvas, size, o.stride or max(size // 2, 1))
        normalize, graphdef, scoring = ctx.normalize, ctx.graphdef, self.prompts.scoring

        def predict(params: dict, images: jax.Array, classifier: Any) -> tuple:
            model = nnx.merge(graphdef, params)
            x = normalize(images)
            b, h, w = x.shape[:3]
            crops = jnp.stack([x[:, y:y + size, c:c + size] for y, c in corners], axis=1)
            crops = crops.reshape(b * len(corners), size, size, x.shape[-1])
            raw = dense_embeddings(model, crops, method, normalize=False)
            norm = jnp.sqrt(jnp.maximum(jnp.sum(raw * raw, axis=-1, keepdims=True), 1e-24))
            scores = patch_scores(scoring, raw if o.score == "logit" else raw / norm, classifier)
            if o.image_top_k:  # classes outside the window's top k cannot win (nor average in)
                present = scoring.class_scores(scoring.image_features(model, crops), classifier)
                present = present[:, :num_objects]
                kept = present >= jax.lax.top_k(present, o.image_top_k)[0][:, -1:]
                kept = jnp.concatenate([kept, jnp.ones((kept.shape[0], scores.shape[-1] -
                                                        num_objects), bool)], axis=1)
                scores = jnp.where(kept[:, None, None, :], scores, SUPPRESSED)
            scores = jnp.concatenate([scores, jnp.log(norm)], axis=-1)  # the norm rides along
            scores = jax.image.resize(scores, (*scores.shape[:1], size, size, scores.shape[-1]),
                                      "linear").reshape(b, len(corners), size, size, -1)
            total = jnp.zeros((b, h, w, scores.shape[-1]), scores.dtype)
            count = jnp.zeros((1, h, w, 1), scores.dtype)
            for i, (y, c) in enumerate(corners):
                total = total.at[:, y:y + size, c:c + size].add(scores[:, i])
                count = count.at[:, y:y + size, c:c + size].add(1.0)
            total, log_norm = total[..., :-1] / count, total[..., -1] / count[..., 0]
            objects = total[..., :num_objects]
            best = jnp.argmax(objects, axis=-1).astype(jnp.int32)
            top = objects.max(axis=-1)  # (score="logit": before normalisation)
            score = (jax.nn.softmax(o.softmax_scale * objects, axis=-1).max(axis=-1)
                     if o.score == "probability" else top)
            extra = total[..., num_objects:]
            margin = top - extra.max(axis=-1) if extra.shape[-1] else jnp.zeros_like(top)
            return best, decision_features(score, log_norm, margin)

        return jax.jit(predict, out_shardings=replicated(ctx.mesh))

    def _predictions(self, source: Any, method: str, params: dict, classifier: Any):
        """Per batch: (object class, score, background decision inputs, labels, images of the
        first batch) (see `_build`)."""
        batch_size = self.options.batch_size
        for start in tqdm(range(0, source.num_rows, batch_size), desc=f"{self.name}/{method}",
                          leave=False, disable=jax.process_index() != 0):
            batch, real = loaded_dense_batch(source.rows, source.num_rows, start, batch_size,
                                             self.ctx.batch_sharding)
            best, features = (np.asarray(a)[:real] for a in self._predict[method](
                params, batch["image"], classifier))
            labels = np.asarray(replicate(batch["mask"]))[:real]
            images = np.asarray(replicate(batch["image"]))[:real] if start == 0 else None
            yield best, features, labels, images

    def _rule(self, method: str, params: dict, classifier: Any, model_null: bool = False
              ) -> BackgroundRule:
        """The background rule: given, the model's, or fit on the calibration split
        (`model_null`: the classifier ends with the model's null column, see `run`)."""
        o = self.options
        if o.background in ("threshold", "none", "prompts"):
            return BackgroundRule(o.background, o.threshold if o.background == "threshold" else 0.0)
        if o.background == "model":
            if model_null:  # the null column outscoring every class, as a background prompt
                return BackgroundRule("prompts", 0.0)
            scale_name, bias_name = self.ctx.model.patch_sigmoid
            if bias_name not in params:
                raise ConfigError(f"{self.name}: background='model' needs a model whose patches "
                                  f"meet prompts through a sigmoid with a bias ({bias_name!r}: "
                                  "e.g. SigLIP's model.use_logit_bias, patch_phrase's "
                                  "model.patch_phrase.logit_bias_init); choose another background")
            scale = float(np.exp(np.asarray(params[scale_name])))
            return BackgroundRule("threshold", -float(np.asarray(params[bias_name])) / scale)
        parts = list(self._predictions(self.calibration, method, params, classifier))
        best, features, labels = (np.concatenate([p[i] for p in parts]) for i in range(3))
        return fit_rule(o.background, features.reshape(-1, len(FEATURES)),
                        np.asarray(self.objects)[best].reshape(-1), labels.reshape(-1),
                        self.source.background, len(self.source.classnames))

    def _null(self, params: dict) -> jax.Array | None:
        """The model's normalised null embedding (`ModelView.patch_null`), if it has one."""
        name = self.ctx.model.patch_null
        if not name or name not in params or not isinstance(self.prompts.scoring,
                                                            EmbeddingScoring):
            return None
        null = jnp.asarray(params[name], jnp.float32)
        return null / jnp.linalg.norm(null)

    def run(self, params: dict) -> dict[str, float]:
        """Per method: miou, pixel_acc (background decided), miou_fg, pixel_acc_fg, iou/<class>."""
        model = nnx.merge(self.ctx.graphdef, params)  # the tower fits every method: before compiling
        for method in self.options.methods:
            check_dense_method(model, method)
        classifier = self.prompts.classifier(params)
        null = self._null(params) if self.options.background == "model" else None
        if null is not None:  # the model's background: one more column, as a background prompt
            classifier = jnp.concatenate([classifier, null[None].astype(classifier.dtype)])
        classnames, background = self.source.classnames, self.source.background
        objects = np.asarray(self.objects)
        out: dict[str, float] = {}
        for method in self.options.methods:
            rule = (self._rule(method, params, classifier, null is not None)
                    if background >= 0 else None)
            full = np.zeros((len(classnames),) * 2, np.int64)
            fg = np.zeros((len(objects),) * 2, np.int64)
            for best, features, labels, images in self._predictions(
                    self.source, method, params, classifier):
                predicted = objects[best]
                if rule is not None:
                    predicted = np.where(rule.background(features), background, predicted)
                    fg += confusion(foreground_labels(labels, background), best, len(objects))
                full += confusion(labels, predicted, len(classnames))
                if images is not None:
                    self._overlays(method, images, labels, predicted)
            out.update({f"{method}/{k}": v for k, v in segmentation_metrics(full, classnames).items()})
            if background >= 0:
                names = [classnames[i] for i in objects]
                fg_metrics = segmentation_metrics(fg, names, per_class=False)
                out[f"{method}/miou_fg"], out[f"{method}/pixel_acc_fg"] = (
                    fg_metrics["miou"], fg_metrics["pixel_acc"])
                if rule.kind in ("threshold", "calibrated"):
                    out[f"{method}/background_threshold"] = rule.threshold
        return out

    def _overlays(self, method: str, images: np.ndarray, labels: np.ndarray,
                  predicted: np.ndarray) -> None:
        """image | truth | prediction PNGs of the first canvases (process 0)."""
        o = self.options
        if not o.overlays or jax.process_index() != 0:
            return
        os.makedirs(o.overlay_dir, exist_ok=True)
        for i in range(min(o.overlays, len(images))):
            gray = images[i] if images.shape[-1] == 3 else np.repeat(images[i], 3, axis=-1)
            strip = np.concatenate([gray, colour(labels[i]), colour(predicted[i])], axis=1)
            Image.fromarray(strip).save(os.path.join(
                o.overlay_dir, f"{o.dataset}_{o.split}_{i:03d}_{method}.png"))


def colour(labels: np.ndarray) -> np.ndarray:
    """[H, W] class ids -> RGB [H, W, 3]: a fixed colour per class, black background (class 0),
    white for ignored pixels."""
    rng = np.random.default_rng(0)
    palette = rng.integers(64, 256, size=(256, 3)).astype(np.uint8)
    palette[0] = 0
    palette[IGNORE] = 255
    return palette[np.asarray(labels, np.int64) % 256]
