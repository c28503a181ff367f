"""Training source of open-vocabulary segmentation on Fashion-MNIST scenes (`data.name`
'fashion_mnist_scenes_pseudo_seg'): canvases with a teacher's dense pseudo-labels (MaskCLIP+).

The training set is the first `num_scenes` canvases of the scenes' "train" split that a
pseudo-label file (`data.pseudo_labels`, written by `python -m vlmjax.train.teacher_pseudo_labels`)
was computed for: per canvas the teacher's training-free segmentation (0 background, k + 1
class k, every class pseudo-labelled as MaskCLIP+ does, novel ones included), per class the
teacher's text embedding (the fixed classifier). No ground-truth label reaches a batch: the
file's item labels and boxes only check that the canvases are the ones it was computed for.
Global batch k holds canvases (k * B .. (k + 1) * B - 1) mod num_scenes, so the state is the
batch counter (exact resume, each process generating only its rows). A batch:
- "image" uint8 [b, S, S, 1]; "label" int32 [b] (-1: no image-level label);
- "pseudo_mask" int32 [b, S, S]: the teacher's pseudo-labels (255 would be ignored);
- "class_embed" float32 [b, 10, e]: the classes' text embeddings (the same per row).
"""

import dataclasses
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import grain
import numpy as np

from vlmjax.data.datasets import load_split
from vlmjax.data.scenes import ItemPool, SceneSet, get_scene_set, scene, scene_texts, split_pool
from vlmjax.data.teacher_file import batch_stream, check_teacher_file
from vlmjax.data.train_source import TrainSource
from vlmjax.errors import DataError
from vlmjax.tokenizers import Tokenizer

log = logging.getLogger(__name__)
OPTIONS = {
    "split": "train",
    "pseudo_labels": "",  # the pseudo-label .npz (python -m vlmjax.train.teacher_pseudo_labels)
    # The teacher the pseudo-labels come from, pinned: checked against the file (empty / -1:
    # unchecked).
    "teacher": "",
    "teacher_step": -1,
    "num_threads": 1,
}
KEYS = ("meta", "classnames", "class_embed", "masks", "threshold", "labels", "boxes")


def read_pseudo_labels(path: str, key: str = "data.pseudo_labels") -> dict[str, Any]:
    """The arrays of a pseudo-label file with its metadata decoded (DataError if unreadable)."""
    if not path or not os.path.isfile(path):
        raise DataError(f"config.{key}={path!r} is not a file; write the teacher's pseudo-labels "
                        "with `python -m vlmjax.train.teacher_pseudo_labels --teacher RUN "
                        "--config CONFIG`")
    with np.load(path) as cached:
        missing = [k for k in KEYS if k not in cached]
        if missing:
            raise DataError(f"config.{key}={path!r} lacks {missing}: not a pseudo-label file; "
                            "write it again with python -m vlmjax.train.teacher_pseudo_labels")
        out = {k: cached[k] for k in KEYS}
    out["meta"] = json.loads(str(out["meta"]))
    out["classnames"] = [str(c) for c in out["classnames"]]
    return out


@dataclasses.dataclass
class PseudoSegBatch(grain.transforms.MapWithIndex):
    """Global batch k -> this process's rows (module doc)."""

    spec: SceneSet
    pool: ItemPool
    size: int
    batch_size: int
    rows: slice
    seed: int
    cached: Mapping[str, Any]

    def map_with_index(self, index: int, element: Any) -> dict:
        del element
        num_scenes = len(self.cached["masks"])
        positions = (index * self.batch_size + np.arange(self.batch_size)[self.rows]) % num_scenes
        images = []
        for p in positions:
            s = scene(self.spec, self.pool, "train", self.size, int(p), self.seed)
            k = len(s.labels)
            if (not np.array_equal(self.cached["labels"][p, :k], s.labels)
                    or not np.array_equal(self.cached["boxes"][p, :k], s.boxes)):
                raise DataError(f"data.pseudo_labels: scene {p} differs from the one the labels "
                                "were computed for (another Fashion-MNIST copy or scene "
                                "generator); compute them again for this data.dir")
            images.append(s.image)
        class_embed = np.asarray(self.cached["class_embed"], np.float32)
        return {"image": np.stack(images)[..., None],
                "label": np.full(len(positions), -1, np.int32),
                "pseudo_mask": self.cached["masks"][positions].astype(np.int32),
                "class_embed": np.broadcast_to(class_embed, (len(positions), *class_embed.shape)
                                               ).copy()}


@dataclasses.dataclass(frozen=True)
class ScenesPseudoSeg:
    """The pseudo-label segmentation source of scene set `name`."""

    name: str

    def check(self, cfg: Mapping) -> None:
        cached = read_pseudo_labels(cfg["data"]["pseudo_labels"])
        check_teacher_file(cfg, self.name, cached["meta"], cached["class_embed"].shape[1],
                           "data.pseudo_labels", "pseudo-labels", "segmentation")

    def caption_texts(self, cfg: Mapping) -> list[str]:
        del cfg
        return scene_texts()

    def build(self, cfg: Mapping, tokenizer: Tokenizer, rows: slice, process_index: int,
              process_count: int) -> Any:
        del tokenizer, process_index, process_count
        data = cfg["data"]
        cached = read_pseudo_labels(data["pseudo_labels"])
        meta = cached["meta"]
        log.info("pseudo-labels of teacher %s step %d (%s, background rule %s): %d canvases",
                 meta["teacher"], meta["step"], meta["method"], meta["background"],
                 len(cached["masks"]))
        images, labels = load_split("fashion_mnist", data["dir"], "train")
        maker = PseudoSegBatch(get_scene_set(self.name), split_pool(images, labels, "train"),
                               cfg["model"]["image"]["image_size"], cfg["train"]["batch_size"],
                               rows, meta["seed"], cached)
        return batch_stream(maker, data)


def pseudo_seg_source(name: str) -> TrainSource:
    """The registry entry training a segmenter on scene set `name`'s pseudo-labels."""
    source = ScenesPseudoSeg(name)
    return TrainSource(options=OPTIONS, check=source.check, build=source.build,
                       caption_texts=source.caption_texts)
