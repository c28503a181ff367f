"""Benchmark splits from prepared TFDS array_record files: metadata, random access, evaluation transform.

`tfds.data_source(..., download=False)` reads array_record files without TensorFlow; a
dataset that is not prepared gets a DataError with the command that prepares it. Images are
resized (shorter side, bicubic) and centre-cropped to the model's size, as CLIP evaluates, in a
thread pool; each process decodes only the rows its devices hold.

tensorflow_datasets (and our builder modules, which subclass its builders) are imported inside
the functions that open a dataset: config validation and training on on-disk data import this
module through the evaluators and never need them.
"""

import concurrent.futures
import io
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from vlmjax.data.benchmarks import Benchmark, get_benchmark, tfds_split
from vlmjax.data.image_text_transform import resize_centre_crop
from vlmjax.errors import DataError

READ_CHUNK = 1024  # examples per random-access read when a whole split is scanned


def register_builder(benchmark: Benchmark) -> None:
    """Registers our TFDS builders when the benchmark uses one (datasets TFDS has none for)."""
    if benchmark.builder:
        # Importing the modules registers their builders with TFDS.
        from vlmjax.data import karpathy_retrieval, manual_benchmarks  # noqa: F401


def tfds_info(benchmark: Benchmark) -> Any:
    """The TFDS dataset's metadata (shipped with tensorflow-datasets or defined by our builder:
    no download, no TensorFlow)."""
    import tensorflow_datasets as tfds

    register_builder(benchmark)
    return tfds.builder(benchmark.tfds, try_gcs=False).info


def tfds_label_names(benchmark: Benchmark) -> list[str]:
    """Label names from the TFDS dataset's metadata."""
    return list(tfds_info(benchmark).features["label"].names)


def num_classes(benchmark: Benchmark) -> int:
    """The number of labels of the benchmark's TFDS dataset."""
    return tfds_info(benchmark).features["label"].num_classes


def open_split(name: str, split: str, data_dir: str = "", skip_decoding: bool = False) -> Any:
    """The random-access TFDS source of a benchmark split (DataError with the fix if absent)."""
    benchmark = get_benchmark(name)
    return open_tfds(benchmark, tfds_split(benchmark, split), data_dir, skip_decoding)


def open_tfds(benchmark: Benchmark, tfds_name_split: str, data_dir: str = "",
              skip_decoding: bool = False) -> Any:
    """A TFDS split of the benchmark's dataset, read at random; `skip_decoding` leaves every
    image feature encoded (for reading only file names, labels or captions, or decoding later)."""
    import tensorflow_datasets as tfds

    decoders = None
    if skip_decoding:
        decoders = {key: tfds.decode.SkipDecoding() for key, feature
                    in tfds_info(benchmark).features.items()
                    if isinstance(feature, tfds.features.Image)}
    register_builder(benchmark)
    try:
        return tfds.data_source(benchmark.tfds, split=tfds_name_split, data_dir=data_dir or None,
                                download=False, decoders=decoders)
    except Exception as e:  # tfds reports a missing dataset as several unrelated errors
        raise DataError(f"benchmark {benchmark.name} ({benchmark.tfds}, split {tfds_name_split}) "
                        f"is not prepared as array_record in "
                        f"{data_dir or 'the TFDS default data_dir'} "
                        f"({type(e).__name__}: {str(e).splitlines()[0][:160]}); prepare it with: "
                        f"{prepare_command(benchmark, data_dir)}") from e


def prepare_command(benchmark: Benchmark, data_dir: str = "") -> str:
    """The exact command (or manual steps) that prepares a benchmark in `data_dir`."""
    target = data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
    return benchmark.prepare.format(tfds=benchmark.tfds, data_dir=target)


def check_benchmark(name: str, split: str, data_dir: str) -> None:
    """Raises DataError before anything compiles if the benchmark split cannot be read."""
    open_split(name, split, data_dir)


def read_examples(source: Any, rows: Sequence[int]) -> list[dict]:
    """The examples at `rows` of a random-access source, in one read where it offers one."""
    if hasattr(source, "__getitems__"):
        try:
            return list(source.__getitems__(list(rows)))
        except TypeError:  # tfds.testing.mock_data's sources break it; read them one by one
            pass
    return [source[int(i)] for i in rows]


def read_feature(source: Any, key: str, n: int) -> list[Any]:
    """Feature `key` of the first `n` examples (read in chunks; open the source with images
    left encoded so that none is decoded)."""
    out: list[Any] = []
    for start in range(0, n, READ_CHUNK):
        out.extend(e[key] for e in read_examples(source, range(start, min(start + READ_CHUNK, n))))
    return out


def eval_transform(image: np.ndarray, size: int, channels: int) -> np.ndarray:
    """uint8 [H, W, c] -> uint8 [size, size, channels]: bicubic resize of the shorter side to
    `size`, centre crop, then RGB or grayscale as the model takes."""
    pil = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image)
    pil = pil.convert("L" if channels == 1 else "RGB")
    out = np.asarray(resize_centre_crop(pil, size), np.uint8)
    return out[..., None] if channels == 1 else out


def decoded(image: Any) -> np.ndarray:
    """A uint8 image array from a decoded feature or from encoded bytes (SkipDecoding)."""
    if isinstance(image, bytes):
        with Image.open(io.BytesIO(image)) as pil:
            return np.asarray(pil.convert("RGB"), np.uint8)
    return np.asarray(image)


class BenchmarkImages:
    """Rows of an opened random-access source, transformed for the model: `rows(indices) ->
    (images, labels)`; examples without a label (captioned sets) get label -1."""

    def __init__(self, source: Any, size: int, channels: int, limit: int = 0, threads: int = 8):
        self.source = source
        self.size, self.channels = size, channels
        self.length = min(len(source), limit) if limit else len(source)
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=threads)

    def __len__(self) -> int:
        return self.length

    def _one(self, index: int) -> tuple[np.ndarray, int]:
        example = self.source[int(index)]
        image = eval_transform(decoded(example["image"]), self.size, self.channels)
        return image, int(example.get("label", -1))

    def rows(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images [len(indices), size, size, channels] and int32 labels."""
        if len(indices) == 0:
            return (np.zeros((0, self.size, self.size, self.channels), np.uint8),
                    np.zeros((0,), np.int32))
        done = list(self.pool.map(self._one, indices))
        return np.stack([d[0] for d in done]), np.asarray([d[1] for d in done], np.int32)
