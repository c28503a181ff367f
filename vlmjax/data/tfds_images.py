"""Benchmark images from prepared TFDS array_record files: random access, evaluation transform.

`tfds.data_source(..., download=False)` reads array_record files without TensorFlow; a
dataset that is not prepared gets a DataError with the command that prepares it. Images are
resized (shorter side, bicubic) and centre-cropped to the model's size, as CLIP evaluates, in a
thread pool; each process decodes only the rows its devices hold.
"""

import concurrent.futures
import io
import os
from typing import Any

import numpy as np
from PIL import Image

from vlmjax.data.benchmarks import Benchmark, get_benchmark, register_builder, tfds_info, tfds_split
from vlmjax.data.image_text_transform import resize_centre_crop
from vlmjax.errors import DataError


def open_split(name: str, split: str, data_dir: str = "") -> Any:
    """The random-access TFDS source of a benchmark split (DataError with the fix if absent)."""
    benchmark = get_benchmark(name)
    return open_tfds(benchmark, tfds_split(benchmark, split), data_dir)


def open_tfds(benchmark: Benchmark, tfds_name_split: str, data_dir: str = "",
              skip_decoding: bool = False) -> Any:
    """A TFDS split of the benchmark's dataset, read at random; `skip_decoding` leaves every
    image feature encoded (for reading only file names and labels, or decoding later)."""
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
    """Rows of a benchmark split, transformed for the model: `rows(indices) -> (images, labels)`.

    Takes a benchmark name or an opened random-access `source`; examples without a label
    (retrieval sets) get label -1.
    """

    def __init__(self, name: str, split: str, data_dir: str, size: int, channels: int,
                 limit: int = 0, threads: int = 8, source: Any = None):
        self.source = source if source is not None else open_split(name, split, data_dir)
        self.size, self.channels = size, channels
        self.length = min(len(self.source), limit) if limit else len(self.source)
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
        decoded = list(self.pool.map(self._one, indices))
        return (np.stack([d[0] for d in decoded]), np.asarray([d[1] for d in decoded], np.int32))


def check_benchmark(name: str, split: str, data_dir: str) -> None:
    """Raises DataError before anything compiles if the benchmark split cannot be read."""
    open_split(name, split, data_dir)
