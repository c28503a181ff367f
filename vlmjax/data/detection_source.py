"""Training source of open-vocabulary detection on Fashion-MNIST scenes (`data.name`
'fashion_mnist_scenes_detection'): canvases with the boxes of their BASE-class items only.

The training set is the first `num_scenes` canvases of the scenes' "train" split that a
teacher-target file (`data.targets`, written by `python -m vlmjax.train.teacher_targets`)
was computed for: the file holds, per canvas, the teacher's embedding of each item's crops
(ViLD-image targets) and, per class, the teacher's text embedding (the fixed classifier).
Items of `novel_classes` stay in the images but are unlabelled, as in ViLD / OWL-ViT: their
boxes, labels and targets never reach a batch. Global batch k holds canvases
(k * B .. (k + 1) * B - 1) mod num_scenes, so the state is the batch counter (exact resume,
each process generating only its rows). A batch:
- "image" uint8 [b, S, S, 1]; "label" int32 [b] (-1: no image-level label);
- "boxes" float32 [b, M, 4] (x0, y0, x1, y1 as fractions of the canvas), "box_labels" int32
  [b, M] (index into the base classes, -1 for padding), "box_targets" float32 [b, M, e];
- "class_embed" float32 [b, K_base, e]: the base classes' text embeddings (the same per row).
With `distill_boxes`="all" a batch also holds every item's box as a class-agnostic region for
ViLD-image: "distill_boxes" [b, M, 4], "distill_valid" bool [b, M], "distill_targets"
[b, M, e] (no labels). ViLD distils the teacher on an RPN's proposals, which find novel objects
too; here the items' own boxes stand in for such proposals: an idealised proposal generator
(it knows where every item is, never what it is), reported as its own variant.
"""

import dataclasses
import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np

from vlmjax.data.datasets import load_split
from vlmjax.data.scenes import ItemPool, SceneSet, get_scene_set, scene, scene_texts, split_pool
from vlmjax.data.teacher_file import batch_stream, check_teacher_file
from vlmjax.data.train_source import TrainSource
from vlmjax.errors import DataError
from vlmjax.options import fail, require_choice
from vlmjax.tokenizers import Tokenizer

log = logging.getLogger(__name__)

# The default held-out classes: one garment, one shoe and the bag (the first two have visual
# neighbours among the base classes, the bag has none).
NOVEL_CLASSES = ("trousers", "sandal", "bag")
OPTIONS = {
    "split": "train",
    "targets": "",  # the teacher-target .npz (python -m vlmjax.train.teacher_targets)
    # The teacher the targets come from, pinned: checked against the file (empty / -1: unchecked).
    "teacher": "",
    "teacher_step": -1,
    "novel_classes": NOVEL_CLASSES,  # never labelled in training
    # Regions of ViLD-image: "base" (the labelled boxes) or "all" (every item's box, unlabelled).
    "distill_boxes": "base",
    "num_threads": 1,
}
TARGET_KEYS = ("meta", "classnames", "class_embed", "labels", "boxes", "box_targets")


def read_targets(path: str, key: str = "data.targets") -> dict[str, Any]:
    """The arrays of a teacher-target file with its metadata decoded (DataError if unreadable)."""
    if not path or not os.path.isfile(path):
        raise DataError(f"config.{key}={path!r} is not a file; write the teacher's targets with "
                        "`python -m vlmjax.train.teacher_targets --teacher RUN --config CONFIG`")
    with np.load(path) as cached:
        missing = [k for k in TARGET_KEYS if k not in cached]
        if missing:
            raise DataError(f"config.{key}={path!r} lacks {missing}: not a teacher-target file; "
                            "write it again with python -m vlmjax.train.teacher_targets")
        out = {k: cached[k] for k in TARGET_KEYS}
    out["meta"] = json.loads(str(out["meta"]))
    out["classnames"] = [str(c) for c in out["classnames"]]
    return out


def split_classes(classnames: Sequence[str], novel: Sequence[str], key: str = "data.novel_classes"
                  ) -> list[int]:
    """Indices of the base classes (those not in `novel`); ConfigError when `novel` names a
    class not in `classnames` or leaves no base class."""
    missing = [c for c in novel if c not in classnames]
    if missing:
        fail(key, f"names {missing}, not classes of the scenes",
             f"choose among {', '.join(classnames)}")
    base = [i for i, c in enumerate(classnames) if c not in novel]
    if not base:
        fail(key, "holds every class, leaving nothing to train on", "hold out a few classes")
    return base


@dataclasses.dataclass
class DetectionBatch(grain.transforms.MapWithIndex):
    """Global batch k -> this process's rows (module doc)."""

    spec: SceneSet
    pool: ItemPool
    size: int
    batch_size: int
    rows: slice
    seed: int
    targets: Mapping[str, Any]
    base: Sequence[int]  # class ids of the base classes, in base-index order
    all_regions: bool = False  # distill_boxes="all"

    def map_with_index(self, index: int, element: Any) -> dict:
        del element
        num_scenes = len(self.targets["labels"])
        positions = (index * self.batch_size + np.arange(self.batch_size)[self.rows]) % num_scenes
        m, e = self.targets["box_targets"].shape[1:]
        base_index = np.full(len(self.targets["classnames"]), -1, np.int32)
        base_index[list(self.base)] = np.arange(len(self.base))
        images = []
        boxes = np.zeros((len(positions), m, 4), np.float32)
        labels = np.full((len(positions), m), -1, np.int32)
        targets = np.zeros((len(positions), m, e), np.float32)
        regions = np.zeros((len(positions), m, 4), np.float32)
        region_valid = np.zeros((len(positions), m), bool)
        region_targets = np.zeros((len(positions), m, e), np.float32)
        for row, p in enumerate(positions):
            s = scene(self.spec, self.pool, "train", self.size, int(p), self.seed)
            k = len(s.labels)
            if (not np.array_equal(self.targets["labels"][p, :k], s.labels)
                    or not np.array_equal(self.targets["boxes"][p, :k], s.boxes)):
                raise DataError(f"data.targets: scene {p} differs from the one the targets were "
                                "computed for (another Fashion-MNIST copy or scene generator); "
                                "compute them again for this data.dir")
            keep = np.flatnonzero(base_index[s.labels] >= 0)
            boxes[row, :len(keep)] = s.boxes[keep] / self.size
            labels[row, :len(keep)] = base_index[s.labels[keep]]
            targets[row, :len(keep)] = self.targets["box_targets"][p, keep]
            regions[row, :k], region_valid[row, :k] = s.boxes / self.size, True
            region_targets[row, :k] = self.targets["box_targets"][p, :k]
            images.append(s.image)
        class_embed = np.asarray(self.targets["class_embed"], np.float32)[list(self.base)]
        batch = {"image": np.stack(images)[..., None],
                 "label": np.full(len(positions), -1, np.int32), "boxes": boxes,
                 "box_labels": labels, "box_targets": targets,
                 "class_embed": np.broadcast_to(class_embed, (len(positions), *class_embed.shape)
                                                ).copy()}
        if self.all_regions:
            batch.update(distill_boxes=regions, distill_valid=region_valid,
                         distill_targets=region_targets)
        return batch


@dataclasses.dataclass(frozen=True)
class ScenesDetection:
    """The detection source of scene set `name`."""

    name: str

    def check(self, cfg: Mapping) -> None:
        data = cfg["data"]
        require_choice(data, "data", "distill_boxes", ("base", "all"))
        targets = read_targets(data["targets"])
        split_classes(targets["classnames"], tuple(data["novel_classes"]))
        check_teacher_file(cfg, self.name, targets["meta"], targets["class_embed"].shape[1],
                           "data.targets", "targets", "detection")

    def caption_texts(self, cfg: Mapping) -> list[str]:
        del cfg
        return scene_texts()

    def build(self, cfg: Mapping, tokenizer: Tokenizer, rows: slice, process_index: int,
              process_count: int) -> Any:
        del tokenizer, process_index, process_count
        data = cfg["data"]
        targets = read_targets(data["targets"])
        meta = targets["meta"]
        base = split_classes(targets["classnames"], tuple(data["novel_classes"]))
        log.info("detection targets of teacher %s step %d: %d canvases; base classes %s",
                 meta["teacher"], meta["step"], len(targets["labels"]),
                 [targets["classnames"][i] for i in base])
        images, labels = load_split("fashion_mnist", data["dir"], "train")
        maker = DetectionBatch(get_scene_set(self.name), split_pool(images, labels, "train"),
                               cfg["model"]["image"]["image_size"], cfg["train"]["batch_size"],
                               rows, meta["seed"], targets, base,
                               all_regions=data["distill_boxes"] == "all")
        return batch_stream(maker, data)


def detection_source(name: str) -> TrainSource:
    """The registry entry training a detector on scene set `name`."""
    source = ScenesDetection(name)
    return TrainSource(options=OPTIONS, check=source.check, build=source.build,
                       caption_texts=source.caption_texts)
