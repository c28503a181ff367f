"""Registry of image-classification datasets on disk: files, loaders, class names, prompts."""

import dataclasses
import functools
import json
import os
from collections.abc import Callable
from importlib import resources

import numpy as np

from vlmjax.data.idx import read_idx
from vlmjax.errors import DataError


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Where a dataset's split files live and how to load them as uint8 [N, H, W, C] + labels."""

    name: str
    split_files: dict[str, tuple[str, str]]  # split -> (images file, labels file) under the dir
    load: Callable[[str, str], tuple[np.ndarray, np.ndarray]]  # (dir, split) -> images, labels
    install_hint: str
    asset: str  # JSON in vlmjax/data/assets with classnames, templates and caption vocabulary


def _load_idx_pair(info_name: str, directory: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    images_file, labels_file = DATASETS[info_name].split_files[split]
    images = read_idx(os.path.join(directory, images_file))
    labels = read_idx(os.path.join(directory, labels_file)).astype(np.int32)
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{info_name} {split}: {images.shape[0]} images but {labels.shape[0]} "
                        f"labels in {directory}; the files are from different splits")
    return images[..., None], labels  # add the channel axis


DATASETS: dict[str, DatasetInfo] = {
    "fashion_mnist": DatasetInfo(
        name="fashion_mnist",
        split_files={
            "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
            "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
        },
        load=functools.partial(_load_idx_pair, "fashion_mnist"),
        install_hint=("install it with `sudo apt-get install dataset-fashion-mnist` (files land "
                      "in /usr/share/datasets/fashion-mnist), or download the four "
                      "*-ubyte.gz files and pass --config.data.dir=THAT_DIR"),
        asset="fashion_mnist.json",
    ),
}


def get_dataset(name: str) -> DatasetInfo:
    """The registry entry for `name`, or a DataError listing the known datasets."""
    if name not in DATASETS:
        raise DataError(f"dataset {name!r} is not registered; choose one of "
                        f"{', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def check_dataset(name: str, directory: str, key: str = "data.dir", split: str | None = None) -> None:
    """Raises a DataError naming the missing file, the config key and how to get the data."""
    info = get_dataset(name)
    splits = [split] if split else list(info.split_files)
    if split and split not in info.split_files:
        raise DataError(f"{name} has no split {split!r}; choose one of "
                        f"{', '.join(info.split_files)}")
    for s in splits:
        for filename in info.split_files[s]:
            path = os.path.join(directory, filename)
            if not os.path.isfile(path):
                raise DataError(f"{name} not found: {path} is missing (config.{key}={directory!r}); "
                                f"{info.install_hint}")


def load_split(name: str, directory: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """All images (uint8 [N, H, W, C]) and labels (int32 [N]) of one split."""
    check_dataset(name, directory, split=split)
    return get_dataset(name).load(directory, split)


def read_keyed_json(path: str, keys: tuple[str, ...], what: str) -> list[str]:
    """The list under the first of `keys` present in a CLIP_benchmark-format JSON file
    (`{dataset: [...]}`; a bare list is accepted as is)."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read {what} file {path}: {e}") from e
    if isinstance(data, dict):
        found = next((k for k in keys if k and k in data), None)
        if found is None:
            raise DataError(f"{what} file {path} has no entry for "
                            f"{' or '.join(repr(k) for k in keys if k)} (it has "
                            f"{', '.join(sorted(data)) or 'none'}); add one")
        data = data[found]
    if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
        raise DataError(f"{what} file {path} must map the dataset to a list of strings")
    return data


def dataset_prompts(name: str, classnames_file: str = "", templates_file: str = ""
                    ) -> tuple[list[str], list[str]]:
    """Class names and zero-shot templates (`{c}` placeholder): user JSON files or the asset."""
    asset = json.loads(resources.files("vlmjax.data").joinpath(
        "assets", get_dataset(name).asset).read_text())
    classnames = (read_keyed_json(classnames_file, (name,), "classnames") if classnames_file
                  else asset["classnames"])
    templates = (read_keyed_json(templates_file, (name,), "templates") if templates_file
                 else asset["templates"])
    if len(classnames) != len(asset["classnames"]):
        raise DataError(f"{len(classnames)} class names given for {name}, which has "
                        f"{len(asset['classnames'])} classes")
    if not templates or any("{c}" not in t for t in templates):
        raise DataError(f"every template for {name} must contain the placeholder {{c}}")
    return classnames, templates


def caption_vocabulary(name: str) -> tuple[list[list[str]], list[str]]:
    """Per-class name paraphrases and caption templates used to caption training images."""
    asset = json.loads(resources.files("vlmjax.data").joinpath(
        "assets", get_dataset(name).asset).read_text())
    return asset["caption_names"], asset["caption_templates"]
