"""Teacher targets of open-vocabulary detection, precomputed once and cached (ViLD's practice).

`python -m vlmjax.train.teacher_targets --teacher RUN [--step N] --config STUDENT_CONFIG`
restores the teacher (any run with pooled embeddings: trained here or imported) at one step
(the latest, resolved once, when --step is not given: the step is pinned in the file and the
printed overrides), and writes an .npz with
- "class_embed" [10, e]: each scene class's text embedding, averaged over the scenes' prompt
  templates and renormalised (CLIP's prompt ensemble): the detector's fixed classifier;
- "box_targets" [N, max_items, e]: for the first `--num_scenes` canvases of the scenes' "train"
  split (the student's canvas size, the config's seed), the teacher's embedding of every item's
  box, ViLD's 1x and 1.5x square crops (`evaluators.region_classification.square_crop`) resized
  to the teacher's input size, averaged and renormalised (ViLD-image's targets), with the
  items' "labels" and "boxes" to check the canvases against when training;
- "meta": JSON of everything the values depend on. The file name is a hash of the meta (teacher
  directory and step, its preprocessing, the crops, dataset, split, seed, canvas, count), under
  RUN/cache/ by default, written atomically: another step, preprocessing or data -> another file.
With `--classes-of DATASET` it writes only the class embeddings of a dense dataset's class list
(COCO / LVIS boxes: what the ov_detection evaluator scores with).
Computing them here rather than inside the student's train step keeps the teacher out of the
step (one forward per crop for the whole run, not per epoch) and makes the pin explicit: the
printed `--config.data.targets=... --config.data.teacher=... --config.data.teacher_step=...`
land in the run's config.json, and the training source refuses a file that does not match.
"""

import argparse
import hashlib
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from flax import nnx

from vlmjax.config import config_from_args
from vlmjax.data.datasets import load_split
from vlmjax.data.dense_sources import open_dense_source
from vlmjax.data.detection_source import read_targets
from vlmjax.data.normalization import Normalization
from vlmjax.data.scenes import get_scene_set, scene, scene_vocabulary, split_pool
from vlmjax.errors import ConfigError
from vlmjax.evaluators.npz_cache import save_npz_atomically
from vlmjax.evaluators.region_classification import square_crop
from vlmjax.models.registry import get_family
from vlmjax.train.run import Run, load_run

log = logging.getLogger(__name__)
VERSION = 1
CROP_SCALES = (1.0, 1.5)


class TeacherEmbedder:
    """A restored teacher's pooled image and text embeddings, jitted with fixed batch sizes."""

    def __init__(self, run: Run, batch_size: int = 256):
        family = run.config["model"]["name"]
        if "embedding" not in get_family(run.config["model"]).capabilities:
            raise ConfigError(f"teacher {run.workdir} is a {family!r} model without pooled "
                              "image / text embeddings; distil from a two_tower, coca or "
                              "patch_phrase run")
        self.run, self.batch_size = run, batch_size
        image = run.config["model"]["image"]
        self.image_size, self.channels = image["image_size"], image["channels"]
        self.context_length = run.config["tokenizer"]["context_length"]
        normalize, graphdef, weights = Normalization.from_config(run.config["data"]), \
            run.graphdef, run.weights

        def images(x: jax.Array) -> jax.Array:
            return nnx.merge(graphdef, weights).encode_image(normalize(x))

        def texts(ids: jax.Array, mask: jax.Array) -> jax.Array:
            return nnx.merge(graphdef, weights).encode_text(ids, mask)

        self._images, self._texts = jax.jit(images), jax.jit(texts)

    def encode_images(self, crops: np.ndarray) -> np.ndarray:
        """uint8 [n, s, s, c] at the teacher's size -> float32 [n, e]; grey crops feed an RGB
        teacher as three equal channels."""
        if crops.shape[-1] == 1 and self.channels == 3:
            crops = np.repeat(crops, 3, axis=-1)
        return self._chunks(lambda x: self._images(x), crops)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        ids, mask = self.run.tokenizer.encode(list(texts), self.context_length)
        return self._chunks(lambda both: self._texts(both[..., 0], both[..., 1] > 0),
                            np.stack([ids, mask.astype(ids.dtype)], axis=-1))

    def _chunks(self, fn, rows: np.ndarray) -> np.ndarray:
        out, size = [], self.batch_size
        for start in range(0, len(rows), size):
            part = rows[start:start + size]
            padded = np.concatenate([part, np.zeros((size - len(part), *part.shape[1:]),
                                                    part.dtype)])
            out.append(np.asarray(fn(padded), np.float32)[:len(part)])
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def class_embeddings(embedder: TeacherEmbedder, classnames: Sequence[str],
                     templates: Sequence[str]) -> np.ndarray:
    """[K, e]: per class the renormalised mean of its prompts' embeddings."""
    texts = [t.format(c=c) for c in classnames for t in templates]
    emb = _normalise(embedder.encode_texts(texts)).reshape(len(classnames), len(templates), -1)
    return _normalise(emb.mean(axis=1)).astype(np.float32)


def crop_embeddings(embedder: TeacherEmbedder, images: Sequence[np.ndarray],
                    boxes: Sequence[np.ndarray], scales: Sequence[float] = CROP_SCALES
                    ) -> list[np.ndarray]:
    """Per image [k, e]: the renormalised mean over `scales` of the teacher's embeddings of each
    box's square crop (ViLD's 1x + 1.5x ensemble)."""
    counts = [len(b) for b in boxes]
    total = 0.0
    for scale in scales:
        crops = [square_crop(image[..., None] if image.ndim == 2 else image, box, scale,
                             embedder.image_size)
                 for image, image_boxes in zip(images, boxes, strict=True) for box in image_boxes]
        if not crops:
            return [np.zeros((0, 0), np.float32) for _ in boxes]
        total = total + _normalise(embedder.encode_images(np.stack(crops)))
    flat = _normalise(total / len(scales)).astype(np.float32)
    return np.split(flat, np.cumsum(counts)[:-1])


def targets_meta(run: Run, *, dataset: str, data_dir: str, canvas: int, seed: int,
                 num_scenes: int, crop_scales: Sequence[float] = CROP_SCALES) -> dict:
    """Everything a target file's values depend on (its cache key)."""
    vocab = scene_vocabulary()
    return {"version": VERSION, "teacher": os.path.abspath(run.workdir), "step": int(run.step),
            "image_size": run.config["model"]["image"]["image_size"],
            "channels": run.config["model"]["image"]["channels"],
            "image_mean": run.config["data"]["image_mean"],
            "image_std": run.config["data"]["image_std"],
            "crop_scales": [float(s) for s in crop_scales], "dataset": dataset, "split": "train",
            "seed": int(seed), "canvas": int(canvas), "num_scenes": int(num_scenes),
            "data_dir": os.path.abspath(data_dir), "classnames": list(vocab["classnames"][1:]),
            "templates": list(vocab["templates"])}


def cache_path(cache_dir: str, meta: Mapping, prefix: str = "teacher_targets") -> str:
    key = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]
    return os.path.join(cache_dir, f"{prefix}-{key}.npz")


def scene_targets(run: Run, *, dataset: str, data_dir: str, canvas: int, seed: int,
                  num_scenes: int, cache_dir: str = "", crop_scales: Sequence[float] = CROP_SCALES,
                  chunk: int = 500) -> str:
    """The target file of `num_scenes` training canvases (module doc), computed unless cached;
    returns its path."""
    meta = targets_meta(run, dataset=dataset, data_dir=data_dir, canvas=canvas, seed=seed,
                        num_scenes=num_scenes, crop_scales=crop_scales)
    path = cache_path(cache_dir or os.path.join(run.workdir, "cache"), meta)
    if os.path.isfile(path):
        read_targets(path)  # a readable file of the same key holds the same values
        log.info("teacher targets cached in %s", path)
        return path
    embedder = TeacherEmbedder(run)
    spec = get_scene_set(dataset)
    images, labels = load_split("fashion_mnist", data_dir, "train")
    pool = split_pool(images, labels, "train")
    m = spec.max_items
    all_labels = np.full((num_scenes, m), -1, np.int32)
    all_boxes = np.zeros((num_scenes, m, 4), np.int32)
    targets = None
    for start in range(0, num_scenes, chunk):
        scenes = [scene(spec, pool, "train", canvas, i, seed)
                  for i in range(start, min(start + chunk, num_scenes))]
        embeds = crop_embeddings(embedder, [s.image for s in scenes], [s.boxes for s in scenes],
                                 crop_scales)
        for offset, (s, e) in enumerate(zip(scenes, embeds, strict=True)):
            i, k = start + offset, len(s.labels)
            if targets is None and k:
                targets = np.zeros((num_scenes, m, e.shape[1]), np.float32)
            all_labels[i, :k], all_boxes[i, :k] = s.labels, s.boxes
            if k:
                targets[i, :k] = e
        log.info("teacher targets: %d / %d canvases", min(start + chunk, num_scenes), num_scenes)
    vocab = scene_vocabulary()
    classes = class_embeddings(embedder, vocab["classnames"][1:], vocab["templates"])
    if targets is None:
        targets = np.zeros((num_scenes, m, classes.shape[1]), np.float32)
    save_npz_atomically(path, {"meta": np.asarray(json.dumps(meta)),
                               "classnames": np.asarray(vocab["classnames"][1:]),
                               "class_embed": classes, "labels": all_labels, "boxes": all_boxes,
                               "box_targets": targets})
    return path


def dataset_class_embeddings(run: Run, dataset: str, data_dir: str, out: str,
                             split: str = "test") -> str:
    """Writes the class embeddings of a dense dataset's object classes to `out` (.npz)."""
    # Only the class list and templates are read: any image settings the dataset accepts.
    image = {"image_size": run.config["model"]["image"]["image_size"], "channels": 3}
    source = open_dense_source(dataset, split, data_dir, image, limit=1)
    names = [c for i, c in enumerate(source.classnames) if i != source.background]
    embedder = TeacherEmbedder(run)
    classes = class_embeddings(embedder, names, source.templates)
    meta = {"version": VERSION, "teacher": os.path.abspath(run.workdir), "step": int(run.step),
            "dataset": dataset, "classnames": names, "templates": list(source.templates)}
    save_npz_atomically(out, {"meta": np.asarray(json.dumps(meta)), "classnames": np.asarray(names),
                              "class_embed": classes})
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vlmjax.train.teacher_targets",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", required=True, help="the teacher's run directory")
    parser.add_argument("--step", type=int, default=None, help="default: latest, pinned")
    parser.add_argument("--config", default="", help="the student's config (canvas, data, seed)")
    parser.add_argument("--num_scenes", type=int, default=20_000)
    parser.add_argument("--cache_dir", default="", help="default: TEACHER/cache")
    parser.add_argument("--classes_of", default="", help="only class embeddings of this dataset")
    parser.add_argument("--data_dir", default="", help="--classes_of: the dataset's directory")
    parser.add_argument("--out", default="", help="--classes_of: the .npz to write")
    args, rest = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run = load_run(args.teacher, args.step, devices=jax.devices()[:1])
    if args.classes_of:
        out = args.out or cache_path(args.cache_dir or os.path.join(run.workdir, "cache"),
                                     {"teacher": run.workdir, "step": run.step,
                                      "dataset": args.classes_of}, "class_embeddings")
        print(dataset_class_embeddings(run, args.classes_of, args.data_dir, out))
        return 0
    overrides = [a[len("--config."):] for a in rest if a.startswith("--config.")]
    if len(overrides) != len(rest):
        parser.error(f"unknown arguments {[a for a in rest if not a.startswith('--config.')]}")
    if not args.config:
        parser.error("--config (the student's config) is needed for the canvas size and data")
    cfg = config_from_args(args.config, overrides).to_dict()
    path = scene_targets(run, dataset="fashion_mnist_scenes", data_dir=cfg["data"]["dir"],
                         canvas=cfg["model"]["image"]["image_size"], seed=cfg["seed"],
                         num_scenes=args.num_scenes, cache_dir=args.cache_dir)
    print(f"--config.data.targets={path} --config.data.teacher={os.path.abspath(run.workdir)} "
          f"--config.data.teacher_step={run.step}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
