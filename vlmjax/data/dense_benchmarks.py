"""Dense benchmarks (semantic segmentation, labelled boxes) as data, read from prepared TFDS files.

`data/assets/dense_benchmarks.json` lists each benchmark: its TFDS directory and version, splits
(`test` is what evaluators read by default), whether examples carry masks or boxes, the class
list (or "from_data": the prepared dataset's label names, LVIS's 1203), the background class
and background prompts, prompt templates, the protocol's resize (`short_side`: the shorter side,
SCLIP's 336 / 448; the longer side capped at `canvas`) and the command that prepares it
(`data.dense_builders`, from the official manual downloads; no TensorFlow).
`BenchmarkDenseSource` serves rows on a `canvas` x `canvas` square: the image resized (bicubic)
and its mask (nearest) at the top left, padding black with mask 255 (ignored); boxes scaled
alike. Metrics are taken at this resolution (the protocols resize predictions back to the
original annotation instead). A mask that does not match its image's size, or holds a class id
outside the class list, is a DataError naming the row.
"""

import functools
import glob
import io
import json
import os
from collections.abc import Mapping
from importlib import resources
from typing import Any

import numpy as np
from PIL import Image

from vlmjax.data.datasets import read_keyed_json
from vlmjax.errors import DataError

IGNORE = 255
KINDS = ("masks", "boxes")


@functools.cache
def dense_benchmarks() -> dict[str, dict]:
    """Every registered dense benchmark's entry by name."""
    raw = json.loads(resources.files("vlmjax.data").joinpath(
        "assets", "dense_benchmarks.json").read_text())
    raw.pop("about", None)
    for name, entry in raw.items():
        if entry["kind"] not in KINDS:
            raise DataError(f"dense benchmark {name}: kind {entry['kind']!r} is not one of {KINDS}")
    return raw


def is_dense_benchmark(name: str) -> bool:
    return name in dense_benchmarks()


def dense_benchmark(name: str) -> dict:
    """The entry of `name` (DataError listing the registered ones otherwise)."""
    if name not in dense_benchmarks():
        raise DataError(f"dense benchmark {name!r} is not registered; choose one of "
                        f"{', '.join(dense_benchmarks())}")
    return dense_benchmarks()[name]


def prepare_command(name: str, data_dir: str = "") -> str:
    target = data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
    return dense_benchmark(name)["prepare"].format(data_dir=target)


def _tfds_dir(data_dir: str) -> str:
    return os.path.expanduser(data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets"))


def open_dense_split(name: str, split: str, data_dir: str = "") -> Any:
    """The random-access source of a prepared split (DataError with the prepare command if not)."""
    entry = dense_benchmark(name)
    if split not in entry["splits"]:
        raise DataError(f"dense benchmark {name} has no split {split!r}; choose one of "
                        f"{', '.join(entry['splits'])}")
    import tensorflow_datasets as tfds  # only where a benchmark is read

    path = os.path.join(_tfds_dir(data_dir), entry["tfds"], entry["version"])
    if not glob.glob(os.path.join(path, "dataset_info.json")):
        raise DataError(f"dense benchmark {name} is not prepared in {path}; prepare it with: "
                        f"{prepare_command(name, data_dir)}")
    try:
        builder = tfds.builder_from_directory(path)
        return builder.as_data_source(split=entry["splits"][split],
                                      decoders=_skip_decoding(tfds, builder))
    except Exception as e:  # a damaged or partial preparation
        raise DataError(f"dense benchmark {name} ({path}, split {entry['splits'][split]}) cannot "
                        f"be read ({type(e).__name__}: {str(e).splitlines()[0][:160]}); prepare "
                        f"it again with: {prepare_command(name, data_dir)}") from e


def _skip_decoding(tfds: Any, builder: Any) -> dict:
    """Images and masks stay encoded (decoded with PIL only for the rows read)."""
    return {key: tfds.decode.SkipDecoding() for key, feature in builder.info.features.items()
            if isinstance(feature, tfds.features.Image)}


def _clean(name: str) -> str:
    return " ".join(name.replace("_", " ").split())


def dense_prompts(name: str, source: Any = None, classnames_file: str = "",
                  templates_file: str = "") -> tuple[list[str], list[str]]:
    """Class names (mask values / box labels index them) and templates; user files first."""
    entry = dense_benchmark(name)
    if classnames_file:
        classnames = read_keyed_json(classnames_file, (name,), "classnames")
    elif entry["classnames"] == "from_data":
        if source is None:
            raise DataError(f"{name} names its classes in the prepared data; prepare it first: "
                            f"{prepare_command(name)}")
        classnames = [_clean(n) for n in source.dataset_info.features["objects"]["label"].names]
    else:
        classnames = list(entry["classnames"])
    if not classnames:
        raise DataError(f"the class list of {name} is empty; give class names "
                        "(evals.<name>.classnames_file)")
    expected = entry.get("num_classes") or (
        len(entry["classnames"]) if isinstance(entry["classnames"], list) else len(classnames))
    if len(classnames) != expected:
        raise DataError(f"{len(classnames)} class names for {name}, whose labels have {expected} "
                        "classes" + (f" (from {classnames_file})" if classnames_file else ""))
    templates = (read_keyed_json(templates_file, (name,), "templates") if templates_file
                 else list(entry["templates"]))
    if not templates or any("{c}" not in t for t in templates):
        raise DataError(f"every template for {name} must contain the placeholder {{c}}")
    return classnames, templates


def protocol_size(height: int, width: int, short_side: int, canvas: int) -> tuple[int, int, float]:
    """(new height, new width, factor): the shorter side to `short_side`, the longer at most
    `canvas`."""
    factor = short_side / min(height, width)
    if max(height, width) * factor > canvas:
        factor = canvas / max(height, width)
    return max(1, round(height * factor)), max(1, round(width * factor)), factor


def _decode(data: Any, mode: str | None = None) -> np.ndarray:
    if isinstance(data, bytes):
        with Image.open(io.BytesIO(data)) as pil:
            return np.asarray(pil.convert(mode) if mode else pil)
    return np.asarray(data)


class BenchmarkDenseSource:
    """A split of a registered dense benchmark on its protocol's canvas (module doc)."""

    def __init__(self, name: str, split: str, data_dir: str, image: Mapping, limit: int = 0,
                 classnames_file: str = "", templates_file: str = "", short_side: int = 0,
                 canvas: int = 0):
        self.dataset, self.split = name, split
        entry = dense_benchmark(name)  # the protocol's resize unless overridden
        self.entry = {**entry, "short_side": short_side or entry["short_side"],
                      "canvas": canvas or max(entry["canvas"], short_side)}
        self.source = open_dense_split(name, split, data_dir)
        self._prompts = dense_prompts(name, self.source, classnames_file, templates_file)
        self.num_rows = min(len(self.source), limit) if limit else len(self.source)
        self.has_masks = self.entry["kind"] == "masks"
        self.has_boxes = self.entry["kind"] == "boxes"
        self.background = int(self.entry["background"])
        self.channels = image["channels"]
        side = self.entry["canvas"]
        self.size = (side, side)

    @property
    def canvas(self) -> tuple[int, int]:
        return self.size

    @property
    def classnames(self) -> list[str]:
        return self._prompts[0]

    @property
    def templates(self) -> list[str]:
        return self._prompts[1]

    @property
    def background_prompts(self) -> list[str]:
        return list(self.entry["background_prompts"])

    def _example(self, index: int) -> tuple[dict, np.ndarray, float, tuple[int, int]]:
        """(the example, its image on the canvas, the resize factor, its original (h, w))."""
        example = self.source[int(index)]
        pixels = _decode(example["image"], "L" if self.channels == 1 else "RGB")
        h, w = pixels.shape[:2]
        new_h, new_w, factor = protocol_size(h, w, self.entry["short_side"], self.entry["canvas"])
        pil = Image.fromarray(pixels).resize((new_w, new_h), Image.BICUBIC)
        out = np.zeros((*self.size, self.channels), np.uint8)
        out[:new_h, :new_w] = np.asarray(pil).reshape(new_h, new_w, self.channels)
        return example, out, factor, (h, w)

    def _mask(self, index: int, example: dict, image_shape: tuple[int, int], factor: float
              ) -> np.ndarray:
        mask = _decode(example["mask"])
        mask = mask[..., 0] if mask.ndim == 3 else mask
        fix = f"rebuild it: {prepare_command(self.dataset)}"
        if mask.shape != image_shape:
            raise DataError(f"{self.dataset} {self.split} row {index}: mask of size "
                            f"{mask.shape[1]}x{mask.shape[0]} for an image of size "
                            f"{image_shape[1]}x{image_shape[0]}; {fix}")
        bad = np.setdiff1d(np.unique(mask), [*range(len(self.classnames)), IGNORE])
        if bad.size:
            raise DataError(f"{self.dataset} {self.split} row {index}: mask holds class id "
                            f"{int(bad[0])}, but the class list has {len(self.classnames)} "
                            f"classes (0..{len(self.classnames) - 1}, {IGNORE} ignored); {fix}")
        new_h, new_w = (round(s * factor) for s in image_shape)
        resized = np.asarray(Image.fromarray(mask.astype(np.uint8)).resize(
            (max(new_w, 1), max(new_h, 1)), Image.NEAREST))
        out = np.full(self.size, IGNORE, np.uint8)
        out[:resized.shape[0], :resized.shape[1]] = resized
        return out

    def rows(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images, masks = [], []
        for index in indices:
            example, image, factor, shape = self._example(int(index))
            images.append(image)
            if self.has_masks:
                masks.append(self._mask(int(index), example, shape, factor))
            else:
                masks.append(np.full(self.size, IGNORE, np.uint8))
        if not images:
            return (np.zeros((0, *self.size, self.channels), np.uint8),
                    np.zeros((0, *self.size), np.uint8))
        return np.stack(images), np.stack(masks)

    def boxes(self, indices: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Non-crowd boxes of each row on the canvas and their class ids."""
        if not self.has_boxes:
            raise DataError(f"{self.dataset} has masks, not boxes")
        out = []
        for index in indices:
            example = self.source[int(index)]
            h, w = _decode(example["image"]).shape[:2]
            _, _, factor = protocol_size(h, w, self.entry["short_side"], self.entry["canvas"])
            objects = example["objects"]
            keep = ~np.asarray(objects["is_crowd"], bool)
            boxes = np.asarray(objects["bbox"], np.float32).reshape(-1, 4)[keep] * factor
            labels = np.asarray(objects["label"], np.int32)[keep]
            if np.any((labels < 0) | (labels >= len(self.classnames))):
                raise DataError(f"{self.dataset} {self.split} row {index}: a box label is not "
                                f"one of the {len(self.classnames)} classes")
            out.append((boxes, labels))
        return out


def check_dense_benchmark(name: str, split: str, data_dir: str) -> None:
    """DataError (naming the prepare command) unless the split is readable with a class list."""
    source = open_dense_split(name, split, data_dir)
    dense_prompts(name, source)
