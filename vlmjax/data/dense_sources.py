"""Dense evaluation data: images with per-pixel class labels and/or labelled boxes.

`DenseSource` is the protocol the dense evaluators (segmentation, region classification) read:
- `rows(indices)` -> uint8 images [n, H, W, c] and uint8 masks [n, H, W] on one canvas size
  per source: mask values index `classnames`, IGNORE (255) marks pixels no metric counts
  (VOC's object boundaries, ADE20K's "other", a canvas's padding);
- `boxes(indices)` -> per row, int32 boxes [k, 4] (x0, y0, x1, y1 in canvas pixels, exclusive)
  and their int32 class ids;
- `background`: the index of the background class in `classnames` (-1 where there is none),
  which evaluators decide by a threshold or by `background_prompts` instead of its name;
- `frequencies` and `federated(indices)`: LVIS's federated annotations (None for datasets
  without them): per class "r" / "c" / "f" ("" unknown), per row the int32 class ids verified
  absent from the image and those whose boxes are not exhaustive (`evaluators.lvis_ap`).
Fashion-MNIST scenes (`data.scenes`) are generated at the model's image size; registered
benchmarks with masks or boxes (`data.dense_benchmarks`) are resized to their protocol's size
on a padded square canvas (evaluated with sliding windows).
`data.eval_sources` also serves scenes through the classification protocol (a canvas's label is
the class of its largest item; test_single: its only item).
"""

import functools
from collections.abc import Mapping
from typing import Protocol

import numpy as np

from vlmjax.data.datasets import check_dataset, load_split
from vlmjax.data.dense_benchmarks import (
    BenchmarkDenseSource,
    check_dense_benchmark,
    dense_benchmarks,
    is_dense_benchmark,
    prepare_command,
)
from vlmjax.data.scenes import (
    BACKGROUND,
    IGNORE,
    SCENE_SETS,
    SPLITS,
    Scene,
    get_scene_set,
    scene,
    scene_vocabulary,
    split_pool,
)
from vlmjax.errors import ConfigError, DataError

SCENE_ROWS = {"train": 55_000, "val": 5_000, "test": 10_000, "test_single": 10_000}
MIN_CANVAS = 16
CACHED_SCENES = 20_000
# Benchmarks whose boxes are federated (LVIS): their preparation must hold the fields below.
FEDERATED_BENCHMARKS = ("lvis_boxes",)
FEDERATED_FIELDS = ("neg_labels", "not_exhaustive_labels")


class DenseSource(Protocol):
    """One split of a dense evaluation dataset (module doc)."""

    dataset: str
    split: str
    num_rows: int
    has_masks: bool
    has_boxes: bool
    background: int  # index of the background class, -1 if none

    @property
    def canvas(self) -> tuple[int, int]:
        """(H, W) of every row's image and mask."""
        ...

    @property
    def classnames(self) -> list[str]:
        ...

    @property
    def templates(self) -> list[str]:
        ...

    @property
    def background_prompts(self) -> list[str]:
        ...

    def rows(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ...

    def boxes(self, indices: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        ...

    @property
    def frequencies(self) -> list[str] | None:
        ...

    def federated(self, indices: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]] | None:
        ...


def check_scenes(dataset: str, split: str, data_dir: str, key: str, image: Mapping | None) -> None:
    """The scene set and split exist, Fashion-MNIST's files are readable, the model takes
    grayscale canvases of at least MIN_CANVAS pixels (ConfigError otherwise)."""
    get_scene_set(dataset)
    if split not in SPLITS:
        raise DataError(f"{dataset} has no split {split!r}; choose one of {', '.join(SPLITS)}")
    check_dataset("fashion_mnist", data_dir, key=key, split=SPLITS[split][0])
    if image is not None and (image["channels"] != 1 or image["image_size"] < MIN_CANVAS):
        raise ConfigError(f"{dataset} canvases are grayscale at the model's size, but the model "
                          f"takes {image['channels']} channel(s) at {image['image_size']} pixels; "
                          f"use model.image.channels=1 and an image_size of at least {MIN_CANVAS}")


class ScenesSource:
    """A split of a scene set at the model's image size, generated row by row."""

    labelled = True
    has_masks = True
    has_boxes = True
    background = BACKGROUND

    def __init__(self, dataset: str, split: str, data_dir: str, image: Mapping, limit: int = 0):
        check_scenes(dataset, split, data_dir, "data.dir", image)
        self.dataset, self.split = dataset, split
        self.spec = get_scene_set(dataset)
        images, labels = load_split("fashion_mnist", data_dir, SPLITS[split][0])
        self.pool = split_pool(images, labels, split)
        self.size = image["image_size"]
        self.num_rows = min(limit, SCENE_ROWS[split]) if limit else SCENE_ROWS[split]
        self._cache: dict[int, Scene] = {}

    def scene(self, index: int) -> Scene:
        """Scene `index` (the last few thousand are kept: evaluators read rows more than once)."""
        if not 0 <= index < self.num_rows:
            raise IndexError(f"{self.dataset} {self.split} has {self.num_rows} rows, not {index}")
        if index not in self._cache:
            if len(self._cache) >= CACHED_SCENES:
                self._cache.clear()
            self._cache[index] = scene(self.spec, self.pool, self.split, self.size, index)
        return self._cache[index]

    @property
    def canvas(self) -> tuple[int, int]:
        return self.size, self.size

    # The dense protocol.
    @property
    def classnames(self) -> list[str]:
        """Background first, then the ten classes: mask value v names classnames[v]."""
        return list(scene_vocabulary()["classnames"])

    @property
    def templates(self) -> list[str]:
        return list(scene_vocabulary()["templates"])

    @property
    def background_prompts(self) -> list[str]:
        return list(scene_vocabulary()["background_prompts"])

    def rows(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scenes = [self.scene(int(i)) for i in indices]
        if not scenes:
            return (np.zeros((0, self.size, self.size, 1), np.uint8),
                    np.zeros((0, self.size, self.size), np.uint8))
        return np.stack([s.image for s in scenes])[..., None], np.stack([s.mask for s in scenes])

    def boxes(self, indices: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each item's box and its class id in `classnames` (class + 1)."""
        return [(s.boxes, s.labels + 1) for s in (self.scene(int(i)) for i in indices)]

    def captions(self, indices: np.ndarray) -> list[str]:
        return [self.scene(int(i)).caption for i in indices]

    # Every class is annotated on every scene: no federation.
    frequencies = None

    def federated(self, indices: np.ndarray) -> None:
        return None


class FederatedSource(BenchmarkDenseSource):
    """A registered dense benchmark that also serves LVIS's federated annotations where its
    preparation holds them (`data.dense_builders`), None otherwise (module doc)."""

    @functools.cached_property
    def _has_federation(self) -> bool:
        """Whether the preparation holds the federated fields (read once per source)."""
        features = self.source.dataset_info.features
        if all(name in features for name in FEDERATED_FIELDS):
            return True
        if self.dataset in FEDERATED_BENCHMARKS:
            raise DataError(f"{self.dataset} in {self.source.dataset_info.data_dir} was "
                            "prepared without LVIS's negative / not-exhaustive classes that its "
                            "federated AP needs; remove that folder and prepare it again: "
                            f"{prepare_command(self.dataset)}")
        return False

    @property
    def frequencies(self) -> list[str] | None:
        """Each class's "r" / "c" / "f" ("" unknown), None without federation."""
        if not self._has_federation:
            return None
        metadata = self.source.dataset_info.metadata or {}
        frequency = [str(f) for f in metadata.get("frequency", [""] * len(self.classnames))]
        if len(frequency) != len(self.classnames):
            raise DataError(f"{self.dataset}: {len(frequency)} class frequencies for "
                            f"{len(self.classnames)} classes; prepare it again: "
                            f"{prepare_command(self.dataset)}")
        return frequency

    def federated(self, indices: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]] | None:
        """Per row, (negative, not-exhaustive) int32 class ids; None without federation."""
        if not self._has_federation:
            return None
        out = []
        for index in indices:
            example = self.source[int(index)]
            lists = tuple(np.asarray(example[name], np.int32).reshape(-1)
                          for name in FEDERATED_FIELDS)
            if any(np.any((ids < 0) | (ids >= len(self.classnames))) for ids in lists):
                raise DataError(f"{self.dataset} {self.split} row {index}: a negative or "
                                f"not-exhaustive class is not one of the {len(self.classnames)} "
                                "classes")
            out.append(lists)
        return out


def scene_prompts() -> tuple[list[str], list[str]]:
    """Class names (without background) and zero-shot templates of the scene sets."""
    vocab = scene_vocabulary()
    return list(vocab["classnames"][1:]), list(vocab["templates"])


__all__ = ["IGNORE", "DenseSource", "FederatedSource", "ScenesSource", "check_scenes",
           "scene_prompts"]


def open_dense_source(dataset: str, split: str, data_dir: str, image: Mapping, limit: int = 0,
                      classnames_file: str = "", templates_file: str = "", short_side: int = 0,
                      canvas: int = 0) -> DenseSource:
    """The split as a DenseSource: a scene set at the model's `image` size, or a registered
    dense benchmark at its protocol's size (`data.dense_benchmarks`; `short_side` / `canvas`
    override the protocol's resize when positive)."""
    if dataset in SCENE_SETS:
        if classnames_file or templates_file:
            raise DataError(f"{dataset} names its classes itself; leave classnames_file and "
                            "templates_file empty")
        return ScenesSource(dataset, split, data_dir, image, limit)
    if is_dense_benchmark(dataset):
        return FederatedSource(dataset, split, data_dir, image, limit, classnames_file,
                               templates_file, short_side, canvas)
    raise _not_dense(dataset)


def check_dense_source(dataset: str, split: str, data_dir: str, key: str,
                       image: Mapping | None = None) -> None:
    """Raises (one line, naming the fix) before anything compiles if the split cannot be read."""
    if dataset in SCENE_SETS:
        check_scenes(dataset, split, data_dir, key, image)
        return
    if is_dense_benchmark(dataset):
        check_dense_benchmark(dataset, split, data_dir)
        return
    raise _not_dense(dataset)


def _not_dense(dataset: str) -> DataError:
    return DataError(f"dataset {dataset!r} has no masks or boxes: dense evaluation reads a scene "
                     f"set ({', '.join(SCENE_SETS)}) or a dense benchmark "
                     f"({', '.join(dense_benchmarks())})")
