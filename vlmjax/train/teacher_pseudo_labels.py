"""Dense pseudo-labels of open-vocabulary segmentation (MaskCLIP+), precomputed once and cached.

`python -m vlmjax.train.teacher_pseudo_labels --teacher RUN [--step N] --config STUDENT_CONFIG`
restores the teacher (a run with pooled and per-patch embeddings: two_tower, patch_phrase) at
one step (the latest, resolved once and pinned when --step is not given) and segments the first
`--num_scenes` canvases of the scenes' "train" split (the student's canvas size, its seed) with
the teacher's training-free dense zero-shot (`TeacherSegmenter`): MaskCLIP's per-patch
embeddings (`models.dense`, or --method tokens / sclip) of windows of the teacher's input size
`stride` apart (SCLIP's sliding window; one window when the canvas has the teacher's size),
cosines with the ten classes' prompt-ensemble text embeddings upsampled bilinearly to pixels and
overlapping windows averaged; a pixel takes its best class unless the background rule
(`evaluators.dense_background`) calls it background: "learned" (default: a logistic rule on
the best cosine and the log patch norm, which carries the objectness a pooled CLIP's cosines
lack, and both relative to the canvas's highest), "calibrated" (the best cosine against a
threshold), both fitted on `--calibration_images` held-out "val" canvases to maximise the
mean of foreground and background IoU of their masks reduced to foreground / background
(class-agnostic: no class label of any canvas is used), or a given cosine threshold
("threshold", --threshold; MaskCLIP's bg_thresh) or "none". As MaskCLIP+ does, every class is
pseudo-labelled, the novel ones included: their names are known at training time, their ground
truth never is. The .npz holds "masks" uint8 [N, S, S] (0 background, k + 1 class k),
"class_embed" [10, e], "classnames", the rule ("rule_kind", "threshold", "rule_mean" /
"rule_std" / "rule_weights": `stored_rule`), the items' "labels" / "boxes" (only to check the
canvases against when training: never in a batch) and "meta", the cache key (teacher directory
and step, its preprocessing, the dense method, window stride, background rule, dataset,
split, seed, canvas, count), written atomically under RUN/cache/ by default. The printed
`--config.data.pseudo_labels=... --config.data.teacher=... --config.data.teacher_step=...` land
in the run's config.json.
`--evaluate N` also scores the teacher itself on N "test" canvases against their ground truth
with the ov_segmentation evaluator's metrics (`teacher_baseline`): the comparison MaskCLIP+
reports.
"""

import argparse
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vlmjax.config import config_from_args
from vlmjax.data.datasets import load_split
from vlmjax.data.detection_source import NOVEL_CLASSES
from vlmjax.data.normalization import Normalization
from vlmjax.data.pseudo_seg_source import read_pseudo_labels
from vlmjax.data.scenes import BACKGROUND, get_scene_set, scene, scene_vocabulary, split_pool
from vlmjax.errors import ConfigError
from vlmjax.evaluators.dense_background import (
    FEATURES,
    MAX_FIT_PIXELS,
    BackgroundRule,
    calibrated_threshold,
    decision_features,
    fit_logistic,
)
from vlmjax.evaluators.dense_metrics import confusion
from vlmjax.evaluators.dense_segmentation import windows
from vlmjax.evaluators.npz_cache import save_npz_atomically
from vlmjax.evaluators.ov_segmentation import split_metrics
from vlmjax.models.dense import DENSE_METHODS, check_dense_method, dense_embeddings
from vlmjax.models.registry import get_family
from vlmjax.train.run import Run, load_run
from vlmjax.train.teacher_targets import TeacherEmbedder, cache_path, class_embeddings

log = logging.getLogger(__name__)
VERSION = 2  # 2: the background rule reads five features (dense_background.FEATURES)
RULES = ("learned", "calibrated", "threshold", "none")
FITTED = ("learned", "calibrated")


class TeacherSegmenter:
    """A restored teacher's training-free dense zero-shot on canvases of any size (module doc)."""

    def __init__(self, run: Run, method: str = "maskclip", stride: int = 0, batch_size: int = 64):
        family = run.config["model"]["name"]
        if "image_tokens" not in get_family(run.config["model"]).capabilities:
            raise ConfigError(f"teacher {run.workdir} is a {family!r} model without per-patch "
                              "embeddings; take pseudo-labels from a two_tower or patch_phrase run")
        if method not in DENSE_METHODS:
            raise ConfigError(f"--method {method!r} is unknown; choose one of "
                              f"{', '.join(DENSE_METHODS)}")
        check_dense_method(run.model(), method)
        self.embedder = TeacherEmbedder(run)
        self.method, self.batch_size = method, batch_size
        self.size = self.embedder.image_size
        self.stride = stride or max(self.size // 2, 1)
        vocab = scene_vocabulary()
        self.classnames = list(vocab["classnames"][1:])
        self.class_embed = class_embeddings(self.embedder, self.classnames, vocab["templates"])
        graphdef, weights = run.graphdef, run.weights
        size, channels = self.size, self.embedder.channels
        norm = Normalization.from_config(run.config["data"])

        def scores(images: jax.Array, classes: jax.Array) -> tuple[jax.Array, jax.Array]:
            model = nnx.merge(graphdef, weights)
            x = norm(images)
            if x.shape[-1] == 1 and channels == 3:
                x = jnp.repeat(x, 3, axis=-1)
            b, h, w = x.shape[:3]
            corners = windows((h, w), size, self.stride)
            crops = jnp.stack([x[:, y:y + size, c:c + size] for y, c in corners], axis=1)
            crops = crops.reshape(b * len(corners), size, size, x.shape[-1])
            raw = dense_embeddings(model, crops, method, normalize=False)
            length = jnp.sqrt(jnp.maximum(jnp.sum(raw * raw, axis=-1, keepdims=True), 1e-24))
            cos = jnp.einsum("bhwe,ke->bhwk", raw / length, classes)
            cos = jnp.concatenate([cos, jnp.log(length)], axis=-1)  # the norm rides along
            cos = jax.image.resize(cos, (cos.shape[0], size, size, cos.shape[-1]), "linear")
            cos = cos.reshape(b, len(corners), size, size, -1)
            total = jnp.zeros((b, h, w, cos.shape[-1]), cos.dtype)
            count = jnp.zeros((1, h, w, 1), cos.dtype)
            for i, (y, c) in enumerate(corners):
                total = total.at[:, y:y + size, c:c + size].add(cos[:, i])
                count = count.at[:, y:y + size, c:c + size].add(1.0)
            total = total / count
            objects = total[..., :-1]
            features = decision_features(objects.max(axis=-1), total[..., -1],
                                         jnp.zeros_like(total[..., -1]))
            return jnp.argmax(objects, axis=-1).astype(jnp.int32), features

        self._scores = jax.jit(scores)

    def best(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 canvases [n, H, W, c] -> per pixel the best class index [n, H, W] and the
        background rules' features [n, H, W, F] (`dense_background.FEATURES`: best cosine, log
        patch norm, 0 for the prompt margin: no background prompts, and the two relative to the
        canvas), windows averaged."""
        classes, out_best, out_features = jnp.asarray(self.class_embed), [], []
        for start in range(0, len(images), self.batch_size):
            part = images[start:start + self.batch_size]
            padded = np.concatenate([part, np.zeros((self.batch_size - len(part), *part.shape[1:]),
                                                    part.dtype)])
            best, features = self._scores(padded, classes)
            out_best.append(np.asarray(best)[:len(part)])
            out_features.append(np.asarray(features, np.float32)[:len(part)])
        return np.concatenate(out_best), np.concatenate(out_features)

    def segment(self, images: np.ndarray, rule: BackgroundRule) -> np.ndarray:
        """uint8 [n, H, W] masks: BACKGROUND where `rule` says so, else best class + 1."""
        best, features = self.best(images)
        return np.where(rule.background(features), BACKGROUND, best + 1).astype(np.uint8)

    def fit(self, kind: str, images: np.ndarray, masks: np.ndarray) -> BackgroundRule:
        """A "calibrated" (best cosine) or "learned" (logistic on cosine and log patch norm)
        rule whose threshold maximises the mean of foreground and background IoU on `masks`
        reduced to foreground / background: class-agnostic, no class label is read."""
        _, features = self.best(images)
        features = features.reshape(-1, features.shape[-1])
        foreground = (np.asarray(masks) != BACKGROUND).astype(np.int64).reshape(-1)
        if len(foreground) > MAX_FIT_PIXELS:  # a fixed subsample: the same rule on every run
            keep = np.random.default_rng(0).choice(len(foreground), MAX_FIT_PIXELS, replace=False)
            features, foreground = features[keep], foreground[keep]
        rule = (fit_logistic(features, foreground) if kind == "learned"
                else BackgroundRule("calibrated"))
        threshold = calibrated_threshold(rule.value(features), np.ones_like(foreground),
                                         foreground, 0, 2)
        return dataclasses.replace(rule, threshold=threshold)


def _canvases(split: str, data_dir: str, canvas: int, count: int, seed: int = 0) -> list:
    spec = get_scene_set("fashion_mnist_scenes")
    images, labels = load_split("fashion_mnist", data_dir, "test" if split == "test" else "train")
    pool = split_pool(images, labels, split)
    return [scene(spec, pool, split, canvas, i, seed) for i in range(count)]


def resolve_rule(segmenter: TeacherSegmenter, kind: str, threshold: float, data_dir: str,
                 canvas: int, calibration_images: int) -> BackgroundRule:
    """The background rule `kind` (module doc), fit on "val" canvases when it is fitted."""
    if kind not in RULES:
        raise ConfigError(f"--background {kind!r} is unknown; choose one of {', '.join(RULES)}")
    if kind in ("none", "threshold"):
        return BackgroundRule(kind, float(threshold))
    val = _canvases("val", data_dir, canvas, calibration_images)
    return segmenter.fit(kind, np.stack([s.image for s in val])[..., None],
                         np.stack([s.mask for s in val]))


def rule_arrays(rule: BackgroundRule) -> dict[str, np.ndarray]:
    """A rule as the arrays of a pseudo-label file (`stored_rule` reads them back)."""
    width = len(FEATURES)
    return {"rule_kind": np.asarray(rule.kind), "threshold": np.asarray(rule.threshold, np.float64),
            "rule_mean": np.zeros(width) if rule.mean is None else rule.mean,
            "rule_std": np.ones(width) if rule.std is None else rule.std,
            "rule_weights": np.zeros(width + 1) if rule.weights is None else rule.weights}


def stored_rule(path: str) -> BackgroundRule:
    """The background rule a pseudo-label file was made with."""
    with np.load(path) as f:
        kind = str(f["rule_kind"])
        learned = kind == "learned"
        if learned and len(f["rule_weights"]) != len(FEATURES) + 1:
            raise ConfigError(f"{path} holds a background rule on {len(f['rule_weights']) - 1} "
                              f"features, this vlmjax decides on {len(FEATURES)}: make the "
                              "pseudo-labels again with python -m vlmjax.train.teacher_pseudo_labels")
        return BackgroundRule(kind, float(f["threshold"]),
                              f["rule_mean"] if learned else None,
                              f["rule_std"] if learned else None,
                              f["rule_weights"] if learned else None)


def pseudo_label_meta(run: Run, *, method: str, stride: int, rule: str, threshold: float,
                      calibration_images: int, data_dir: str, canvas: int, seed: int,
                      num_scenes: int) -> dict:
    """Everything a pseudo-label file's values depend on (its cache key)."""
    vocab = scene_vocabulary()
    return {"version": VERSION, "kind": "pseudo_labels", "teacher": os.path.abspath(run.workdir),
            "step": int(run.step), "image_size": run.config["model"]["image"]["image_size"],
            "channels": run.config["model"]["image"]["channels"],
            "image_mean": run.config["data"]["image_mean"],
            "image_std": run.config["data"]["image_std"], "method": method, "stride": int(stride),
            "background": rule, "threshold": float(threshold) if rule == "threshold" else None,
            "calibration_images": int(calibration_images) if rule in FITTED else 0,
            "dataset": "fashion_mnist_scenes", "split": "train", "seed": int(seed),
            "canvas": int(canvas), "num_scenes": int(num_scenes),
            "data_dir": os.path.abspath(data_dir), "classnames": list(vocab["classnames"][1:]),
            "templates": list(vocab["templates"])}


def scene_pseudo_labels(run: Run, *, data_dir: str, canvas: int, seed: int, num_scenes: int,
                        method: str = "maskclip", stride: int = 0, background: str = "learned",
                        threshold: float = 0.0, calibration_images: int = 300,
                        cache_dir: str = "", chunk: int = 500) -> str:
    """The pseudo-label file of `num_scenes` training canvases (module doc), computed unless
    cached; returns its path."""
    meta = pseudo_label_meta(run, method=method, stride=stride, rule=background,
                             threshold=threshold, calibration_images=calibration_images,
                             data_dir=data_dir, canvas=canvas, seed=seed, num_scenes=num_scenes)
    path = cache_path(cache_dir or os.path.join(run.workdir, "cache"), meta, "pseudo_labels")
    if os.path.isfile(path):
        read_pseudo_labels(path)  # a readable file of the same key holds the same values
        log.info("pseudo-labels cached in %s", path)
        return path
    segmenter = TeacherSegmenter(run, method, stride)
    rule = resolve_rule(segmenter, background, threshold, data_dir, canvas, calibration_images)
    log.info("pseudo-labels: background rule %s, threshold %.4f", rule.kind, rule.threshold)
    spec = get_scene_set("fashion_mnist_scenes")
    images, labels = load_split("fashion_mnist", data_dir, "train")
    pool = split_pool(images, labels, "train")
    m = spec.max_items
    masks = np.zeros((num_scenes, canvas, canvas), np.uint8)
    all_labels = np.full((num_scenes, m), -1, np.int32)
    all_boxes = np.zeros((num_scenes, m, 4), np.int32)
    for start in range(0, num_scenes, chunk):
        scenes = [scene(spec, pool, "train", canvas, i, seed)
                  for i in range(start, min(start + chunk, num_scenes))]
        masks[start:start + len(scenes)] = segmenter.segment(
            np.stack([s.image for s in scenes])[..., None], rule)
        for offset, s in enumerate(scenes):
            k = len(s.labels)
            all_labels[start + offset, :k], all_boxes[start + offset, :k] = s.labels, s.boxes
        log.info("pseudo-labels: %d / %d canvases", start + len(scenes), num_scenes)
    save_npz_atomically(path, {"meta": np.asarray(json.dumps(meta)),
                               "classnames": np.asarray(segmenter.classnames),
                               "class_embed": segmenter.class_embed, "masks": masks,
                               "labels": all_labels, "boxes": all_boxes, **rule_arrays(rule)})
    return path


def teacher_baseline(segmenter: TeacherSegmenter, rule: BackgroundRule, *, data_dir: str, canvas: int,
                     num_images: int, novel: Sequence[str] = NOVEL_CLASSES) -> dict[str, float]:
    """The teacher's training-free segmentation of the first `num_images` "test" canvases,
    scored like the ov_segmentation evaluator (`split_metrics`)."""
    names = ["background", *segmenter.classnames]
    matrix = np.zeros((len(names),) * 2, np.int64)
    for start in range(0, num_images, 500):
        scenes = _canvases("test", data_dir, canvas, min(num_images, start + 500))[start:]
        predicted = segmenter.segment(np.stack([s.image for s in scenes])[..., None], rule)
        matrix += confusion(np.stack([s.mask for s in scenes]), predicted, len(names))
    return split_metrics(matrix, names, [names.index(c) for c in novel], BACKGROUND)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vlmjax.train.teacher_pseudo_labels",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", required=True, help="the teacher's run directory")
    parser.add_argument("--step", type=int, default=None, help="default: latest, pinned")
    parser.add_argument("--config", required=True, help="the student's config (canvas, data, seed)")
    parser.add_argument("--num_scenes", type=int, default=20_000)
    parser.add_argument("--method", default="maskclip", choices=DENSE_METHODS)
    parser.add_argument("--stride", type=int, default=0, help="0: half the teacher's input size")
    parser.add_argument("--background", default="learned", choices=RULES)
    parser.add_argument("--threshold", type=float, default=0.0, help="--background threshold")
    parser.add_argument("--calibration_images", type=int, default=300)
    parser.add_argument("--evaluate", type=int, default=0,
                        help="also score the teacher on this many test canvases")
    parser.add_argument("--cache_dir", default="", help="default: TEACHER/cache")
    args, rest = parser.parse_known_args(argv)
    overrides = [a[len("--config."):] for a in rest if a.startswith("--config.")]
    if len(overrides) != len(rest):
        parser.error(f"unknown arguments {[a for a in rest if not a.startswith('--config.')]}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = config_from_args(args.config, overrides).to_dict()
    run = load_run(args.teacher, args.step, devices=jax.devices()[:1])
    canvas, data_dir = cfg["model"]["image"]["image_size"], cfg["data"]["dir"]
    path = scene_pseudo_labels(run, data_dir=data_dir, canvas=canvas, seed=cfg["seed"],
                               num_scenes=args.num_scenes, method=args.method,
                               stride=args.stride, background=args.background,
                               threshold=args.threshold,
                               calibration_images=args.calibration_images,
                               cache_dir=args.cache_dir)
    if args.evaluate:
        segmenter = TeacherSegmenter(run, args.method, args.stride)
        novel = tuple(cfg["data"].get("novel_classes", NOVEL_CLASSES))
        metrics = teacher_baseline(segmenter, stored_rule(path), data_dir=data_dir, canvas=canvas,
                                   num_images=args.evaluate, novel=novel)
        print("teacher_baseline " + json.dumps({"method": args.method, **metrics}))
    print(f"--config.data.pseudo_labels={path} --config.data.teacher="
          f"{os.path.abspath(run.workdir)} --config.data.teacher_step={run.step}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
