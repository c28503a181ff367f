"""What every evaluator reads: one split of an evaluation dataset, behind one protocol.

`open_eval_source(dataset, split, data_dir, image, ...)` returns an `EvalSource` for
- an on-disk dataset (`data.datasets`, e.g. Fashion-MNIST's IDX files), loaded whole into
  memory; its images are not resized, so they must have the model's size (ConfigError if not);
- a scene set (`data.scenes`: canvases of Fashion-MNIST items generated at the model's size;
  a canvas's label is its largest item's class, its caption the one it was made with);
- a registered benchmark (`data.benchmarks`), read row by row from prepared TFDS files and
  transformed to the model's size; a CoOp split file (`split_file`) replaces the TFDS split's
  rows, labels and class names with CoOp's (`data.coop_splits`).
Every source serves rows (uint8 images at the model's size, int32 labels: -1 where it has
none), class names and prompt templates where it is labelled, and captions of its images:
class captions (names x caption templates) for labelled sets, every human caption for captioned
sets (COCO, Flickr30k in Karpathy's splits). Zero-shot, retrieval, captioning and the transfer
evaluators all read through it, so a new dataset is one registry entry.
"""

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np

from vlmjax.data import datasets
from vlmjax.data.benchmark_prompts import benchmark_prompts, class_count, require_labels
from vlmjax.data.benchmarks import benchmarks, get_benchmark
from vlmjax.data.coop_splits import CoopSplitSource
from vlmjax.data.dense_sources import ScenesSource, check_scenes, scene_prompts
from vlmjax.data.scenes import SCENE_SETS, is_scene_set, scene_vocabulary
from vlmjax.data.tfds_images import BenchmarkImages, check_benchmark, open_split, read_feature
from vlmjax.errors import DataError

RowLoader = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # indices -> (images, labels)


@dataclasses.dataclass(frozen=True)
class ClassCaptions:
    """How a labelled set captions its classes: every template with every name of a class."""

    names: list[list[str]]  # per class, the names (paraphrases) captions use
    templates: list[str]  # with the placeholder {c}


@dataclasses.dataclass(frozen=True)
class ImageCaptions:
    """Human captions of a captioned set's rows: texts[t] describes row image[t]."""

    texts: list[str]
    image: np.ndarray  # int64 [num_texts]


class EvalSource(Protocol):
    """One split of an evaluation dataset, as evaluators read it."""

    dataset: str
    split: str
    num_rows: int  # rows served (the split's first `limit` if one was given)
    labelled: bool  # whether rows carry class labels

    def rows(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images [len(indices), size, size, channels] and int32 labels."""
        ...

    def labels(self) -> np.ndarray:
        """int32 [num_rows]: the label of every row (-1 without labels), no image decoded."""
        ...

    @property
    def num_classes(self) -> int:
        """The size of the label space (no user class names needed)."""
        ...

    @property
    def classnames(self) -> list[str]:
        """Class names in label order (DataError for a set without labels)."""
        ...

    @property
    def templates(self) -> list[str]:
        """Zero-shot prompt templates, each with the placeholder {c}."""
        ...

    def class_captions(self) -> ClassCaptions:
        """Captions of each class (labelled sets; DataError otherwise)."""
        ...

    def image_captions(self) -> ImageCaptions | None:
        """Every human caption of the rows, or None where the set has none."""
        ...


class OnDiskSource:
    """A split of a registered on-disk dataset, in memory (images at their own size)."""

    labelled = True

    def __init__(self, dataset: str, split: str, data_dir: str, image: Mapping, limit: int = 0,
                 classnames_file: str = "", templates_file: str = ""):
        self.dataset, self.split = dataset, split
        images, labels = datasets.load_split(dataset, data_dir, split, image_size=image["image_size"],
                                             channels=image["channels"])
        n = min(len(labels), limit) if limit else len(labels)
        self.images, self._labels, self.num_rows = images[:n], labels[:n], n
        self._prompt_files = (classnames_file, templates_file)

    def rows(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.images[indices], self._labels[indices]

    def labels(self) -> np.ndarray:
        return self._labels

    @property
    def num_classes(self) -> int:
        return datasets.num_classes(self.dataset)

    @functools.cached_property
    def _prompts(self) -> tuple[list[str], list[str]]:
        return datasets.dataset_prompts(self.dataset, *self._prompt_files)

    @property
    def classnames(self) -> list[str]:
        return self._prompts[0]

    @property
    def templates(self) -> list[str]:
        return self._prompts[1]

    def class_captions(self) -> ClassCaptions:
        """The paraphrases and caption templates the dataset's training captions use."""
        return ClassCaptions(*datasets.caption_vocabulary(self.dataset))

    def image_captions(self) -> None:
        return None


class BenchmarkSource:
    """A split of a registered benchmark (or CoOp's split of it) from prepared TFDS files."""

    def __init__(self, dataset: str, split: str, data_dir: str, image: Mapping, limit: int = 0,
                 split_file: str = "", classnames_file: str = "", templates_file: str = ""):
        self.dataset, self.split = dataset, split
        self.benchmark = get_benchmark(dataset)
        self.labelled = self.benchmark.labelled
        self._where = (data_dir, split_file)
        self._prompt_files = (classnames_file, templates_file)
        if split_file:
            source: Any = CoopSplitSource(dataset, split, data_dir, split_file)
        else:  # a captioned set keeps images encoded: listing its captions decodes none
            source = open_split(dataset, split, data_dir, skip_decoding=bool(self.benchmark.captions))
        self.images = BenchmarkImages(source, image["image_size"], image["channels"], limit)
        self.num_rows = len(self.images)

    def rows(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.images.rows(indices)

    def labels(self) -> np.ndarray:
        return self._labels

    @functools.cached_property
    def _labels(self) -> np.ndarray:
        source, n = self.images.source, self.num_rows
        if not self.labelled:
            return np.full((n,), -1, np.int32)
        if isinstance(source, CoopSplitSource):
            return np.asarray(source.labels()[:n], np.int32)
        data_dir, _ = self._where
        encoded = open_split(self.dataset, self.split, data_dir, skip_decoding=True)
        return np.asarray(read_feature(encoded, "label", n), np.int32)

    @property
    def num_classes(self) -> int:
        return class_count(self.dataset, self._where[1])

    @functools.cached_property
    def _prompts(self) -> tuple[list[str], list[str]]:
        return benchmark_prompts(self.dataset, *self._prompt_files, split_file=self._where[1])

    @property
    def classnames(self) -> list[str]:
        return self._prompts[0]

    @property
    def templates(self) -> list[str]:
        return self._prompts[1]

    def class_captions(self) -> ClassCaptions:
        """Each class captioned by its name in the zero-shot templates."""
        return ClassCaptions([[name] for name in self.classnames], self.templates)

    def image_captions(self) -> ImageCaptions | None:
        key = self.benchmark.captions
        if not key:
            return None
        texts, owner = [], []
        for row, captions in enumerate(read_feature(self.images.source, key, self.num_rows)):
            for caption in captions:
                texts.append(caption.decode() if isinstance(caption, bytes) else str(caption))
                owner.append(row)
        return ImageCaptions(texts, np.asarray(owner, np.int64))


class ScenesClassification:
    """A Fashion-MNIST scene split (`data.scenes`) at the model's size, through this protocol:
    a canvas's label is the class of its largest item (test_single: its only item), its
    caption the one it was generated with."""

    labelled = True

    def __init__(self, dataset: str, split: str, data_dir: str, image: Mapping, limit: int = 0):
        self.scenes = ScenesSource(dataset, split, data_dir, image, limit)
        self.dataset, self.split, self.num_rows = dataset, split, self.scenes.num_rows

    def _label(self, index: int) -> int:
        s = self.scenes.scene(index)
        if len(s.labels) == 0:
            return -1
        return int(s.labels[int(np.argmax([(s.mask == k + 1).sum() for k in s.labels]))])

    def rows(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images, _ = self.scenes.rows(indices)
        return images, np.asarray([self._label(int(i)) for i in indices], np.int32)

    def labels(self) -> np.ndarray:
        return np.asarray([self._label(i) for i in range(self.num_rows)], np.int32)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    @property
    def classnames(self) -> list[str]:
        return scene_prompts()[0]

    @property
    def templates(self) -> list[str]:
        return scene_prompts()[1]

    def class_captions(self) -> ClassCaptions:
        """Each class by its paraphrases in the scene templates (one item, with its article)."""
        vocab = scene_vocabulary()
        return ClassCaptions(vocab["caption_names"],
                             [t.replace("{items}", "a {c}") for t in vocab["scene_templates"]])

    def image_captions(self) -> ImageCaptions:
        rows = np.arange(self.num_rows)
        return ImageCaptions(self.scenes.captions(rows), rows.astype(np.int64))


def is_on_disk(dataset: str, split_file: str = "") -> bool:
    """Whether `dataset` is an on-disk dataset (else a benchmark); CoOp split files are for
    benchmarks only (DataError)."""
    if dataset in datasets.DATASETS and split_file:
        raise DataError(f"split_file (CoOp's splits) applies to registered benchmarks, not to the "
                        f"on-disk dataset {dataset}; leave it empty")
    return dataset in datasets.DATASETS


def captioned(dataset: str) -> bool:
    """Whether the set has human captions of each image (else captions describe its classes)."""
    if is_scene_set(dataset):  # each canvas has the caption it was generated with
        return True
    return not is_on_disk(dataset) and bool(get_benchmark(dataset).captions)


def _no_split_file(dataset: str, split_file: str) -> None:
    if split_file:
        raise DataError(f"split_file (CoOp's splits) applies to registered benchmarks, not to the "
                        f"scene set {dataset}; leave it empty")


def source_data_dir(dataset: str, data_dir: str, run_data_dir: str) -> str:
    """An evaluator's data_dir, else where the run's on-disk datasets live (config.data.dir) for
    one of those, else "" (TFDS's default data_dir) for a benchmark."""
    reads_run_dir = dataset in datasets.DATASETS or is_scene_set(dataset)
    return data_dir or (run_data_dir if reads_run_dir else "")


def open_eval_source(dataset: str, split: str, data_dir: str, image: Mapping, limit: int = 0,
                     split_file: str = "", classnames_file: str = "", templates_file: str = ""
                     ) -> EvalSource:
    """The split as an EvalSource whose images have the model's `image` size ({"image_size",
    "channels"}); `limit` > 0 serves its first rows only. `data_dir`: the on-disk dataset's
    directory (Fashion-MNIST's for scene sets), or the TFDS data_dir of a benchmark ("" is
    TFDS's default)."""
    if is_scene_set(dataset):
        _no_split_file(dataset, split_file)
        return ScenesClassification(dataset, split, data_dir, image, limit)
    if is_on_disk(dataset, split_file):
        return OnDiskSource(dataset, split, data_dir, image, limit, classnames_file, templates_file)
    return BenchmarkSource(dataset, split, data_dir, image, limit, split_file, classnames_file,
                           templates_file)


def check_eval_source(dataset: str, split: str, data_dir: str, key: str, *,
                      image: Mapping | None = None, split_file: str = "", labels: bool = True
                      ) -> None:
    """Raises DataError (or ConfigError: on-disk images of another size than the model's `image`)
    naming the config key and the fix if the split cannot be read, before anything compiles;
    `labels`: the evaluator needs class labels."""
    if is_scene_set(dataset):
        _no_split_file(dataset, split_file)
        check_scenes(dataset, split, data_dir, key, image)
        return
    if is_on_disk(dataset, split_file):
        size = image or {}
        datasets.check_dataset(dataset, data_dir, key=key, split=split,
                               image_size=size.get("image_size"), channels=size.get("channels"))
        return
    if dataset not in benchmarks():
        raise DataError(f"dataset {dataset!r} is neither an on-disk dataset "
                        f"({', '.join(datasets.DATASETS)}), a scene set "
                        f"({', '.join(SCENE_SETS)}) nor a registered benchmark "
                        f"({', '.join(sorted(benchmarks()))})")
    if labels:
        require_labels(get_benchmark(dataset))
    if split_file:  # every CoOp image found in the TFDS dataset
        CoopSplitSource(dataset, split, data_dir, split_file)
        return
    check_benchmark(dataset, split, data_dir)


def eval_prompts(dataset: str, classnames_file: str = "", templates_file: str = "",
                 split_file: str = "") -> tuple[list[str], list[str]]:
    """Class names and templates of a dataset or benchmark (user files take precedence)."""
    if is_scene_set(dataset):
        _no_split_file(dataset, split_file)
        if classnames_file or templates_file:
            raise DataError(f"{dataset} names its classes itself; leave classnames_file and "
                            "templates_file empty")
        return scene_prompts()
    if is_on_disk(dataset, split_file):
        return datasets.dataset_prompts(dataset, classnames_file, templates_file)
    return benchmark_prompts(dataset, classnames_file, templates_file, split_file)
