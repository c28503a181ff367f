"""What classification evaluators read: a dataset's prompts and rows, from either registry.

Datasets on disk in their own format (Fashion-MNIST's IDX files, `data.datasets`) load whole
into memory; benchmarks (`data.benchmarks`) are read row by row from prepared TFDS files and
transformed to the model's image size. A CoOp split file (`split_file`, benchmarks only) replaces
the TFDS split's rows, labels and class names with CoOp's (`data.coop_splits`).
"""

from collections.abc import Callable, Mapping

import numpy as np

from vlmjax.data import benchmarks, datasets
from vlmjax.errors import DataError

RowLoader = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # indices -> (images, labels)


def _on_disk(name: str, split_file: str) -> bool:
    if name in datasets.DATASETS and split_file:
        raise DataError(f"split_file (CoOp's splits) applies to registered benchmarks, not to the "
                        f"on-disk dataset {name}; leave it empty")
    return name in datasets.DATASETS


def eval_prompts(name: str, classnames_file: str = "", templates_file: str = "",
                 split_file: str = "") -> tuple[list[str], list[str]]:
    """Class names and templates of a dataset or benchmark (user files take precedence)."""
    if _on_disk(name, split_file):
        return datasets.dataset_prompts(name, classnames_file, templates_file)
    return benchmarks.benchmark_prompts(name, classnames_file, templates_file, split_file)


def eval_rows(name: str, split: str, data_dir: str, image: Mapping, limit: int = 0,
              split_file: str = "") -> tuple[int, RowLoader]:
    """(number of rows, loader of rows as uint8 images at the model's size and int32 labels).

    `data_dir`: the IDX directory for on-disk datasets; the TFDS data_dir for benchmarks ("" is
    TFDS's default).
    """
    if _on_disk(name, split_file):
        images, labels = datasets.load_split(name, data_dir, split)
        n = min(len(labels), limit) if limit else len(labels)
        return n, lambda rows: (images[rows], labels[rows])
    from vlmjax.data.tfds_images import BenchmarkImages
    coop = None
    if split_file:
        from vlmjax.data.coop_splits import CoopSplitSource
        coop = CoopSplitSource(name, split, data_dir, split_file)
    source = BenchmarkImages(name, split, data_dir, image["image_size"], image["channels"], limit,
                             source=coop)
    return len(source), source.rows


def check_eval_dataset(name: str, split: str, data_dir: str, key: str, split_file: str = "") -> None:
    """Raises DataError (naming the config key and the fix) if the split cannot be read."""
    if _on_disk(name, split_file):
        datasets.check_dataset(name, data_dir, key=key, split=split)
        return
    if name not in benchmarks.benchmarks():
        raise DataError(f"dataset {name!r} is neither an on-disk dataset "
                        f"({', '.join(datasets.DATASETS)}) nor a registered benchmark "
                        f"({', '.join(sorted(benchmarks.benchmarks()))})")
    if split_file:  # every CoOp image found in the TFDS dataset
        from vlmjax.data.coop_splits import CoopSplitSource
        CoopSplitSource(name, split, data_dir, split_file)
        return
    from vlmjax.data.tfds_images import check_benchmark
    check_benchmark(name, split, data_dir)
