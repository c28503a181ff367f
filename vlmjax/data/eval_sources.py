"""What classification evaluators read: a dataset's prompts and rows, from either registry.

Datasets on disk in their own format (Fashion-MNIST's IDX files, `data.datasets`) load whole
into memory; benchmarks (`data.benchmarks`) are read row by row from prepared TFDS files and
transformed to the model's image size.
"""

from collections.abc import Callable, Mapping

import numpy as np

from vlmjax.data import benchmarks, datasets
from vlmjax.errors import DataError

RowLoader = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # indices -> (images, labels)


def eval_prompts(name: str, classnames_file: str = "", templates_file: str = ""
                 ) -> tuple[list[str], list[str]]:
    """Class names and templates of a dataset or benchmark (user files take precedence)."""
    if name in datasets.DATASETS:
        return datasets.dataset_prompts(name, classnames_file, templates_file)
    return benchmarks.benchmark_prompts(name, classnames_file, templates_file)


def eval_rows(name: str, split: str, data_dir: str, image: Mapping, limit: int = 0
              ) -> tuple[int, RowLoader]:
    """(number of rows, loader of rows as uint8 images at the model's size and int32 labels).

    `data_dir`: the IDX directory for on-disk datasets; the TFDS data_dir for benchmarks ("" is
    TFDS's default).
    """
    if name in datasets.DATASETS:
        images, labels = datasets.load_split(name, data_dir, split)
        n = min(len(labels), limit) if limit else len(labels)
        return n, lambda rows: (images[rows], labels[rows])
    from vlmjax.data.tfds_images import BenchmarkImages
    source = BenchmarkImages(name, split, data_dir, image["image_size"], image["channels"], limit)
    return len(source), source.rows


def check_eval_dataset(name: str, split: str, data_dir: str, key: str) -> None:
    """Raises DataError (naming the config key and the fix) if the split cannot be read."""
    if name in datasets.DATASETS:
        datasets.check_dataset(name, data_dir, key=key, split=split)
        return
    if name not in benchmarks.benchmarks():
        raise DataError(f"dataset {name!r} is neither an on-disk dataset "
                        f"({', '.join(datasets.DATASETS)}) nor a registered benchmark "
                        f"({', '.join(sorted(benchmarks.benchmarks()))})")
    from vlmjax.data.tfds_images import check_benchmark
    check_benchmark(name, split, data_dir)
