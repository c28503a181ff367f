"""Registry of labelled image datasets read whole into memory (Fashion-MNIST's IDX files on disk,
scikit-learn's bundled digits): loaders, checks, class names, prompts and caption vocabularies."""

import dataclasses
import json
import os
from collections.abc import Callable
from importlib import resources

import numpy as np

from vlmjax.data import digits
from vlmjax.data.idx import read_idx, read_idx_header
from vlmjax.errors import ConfigError, DataError


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """A labelled image dataset read whole into memory: uint8 [N, H, W, C] images + int32 labels."""

    name: str
    splits: tuple[str, ...]
    load: Callable[[str, str], tuple[np.ndarray, np.ndarray]]  # (dir, split) -> images, labels
    # (dir, split, config key) -> DataError naming the missing or damaged file (or package) and
    # the fix; reads headers at most, never the data.
    check: Callable[[str, str, str], None]
    asset: str  # JSON in vlmjax/data/assets with classnames, templates and caption vocabulary
    image_shape: tuple[int, int, int]  # (height, width, channels) of every image
    reads_dir: bool = True  # False: the data ships with a package (the directory is unused)


@dataclasses.dataclass(frozen=True)
class IdxFiles:
    """A dataset stored as gzipped IDX files (the MNIST format) in one directory."""

    name: str
    split_files: dict[str, tuple[str, str]]  # split -> (images file, labels file) under the dir
    install_hint: str
    repair_hint: str  # what to do about a damaged file
    image_shape: tuple[int, int, int]

    def check_shapes(self, images_path: str, images_shape: tuple[int, ...], labels_path: str,
                     labels_shape: tuple[int, ...]) -> None:
        """The IDX dimensions must be [N, H, W] images and [N] labels with the dataset's H x W: a
        header whose dimensions are permuted would otherwise reshape into scrambled images."""
        height, width, _ = self.image_shape
        if len(images_shape) != 3 or images_shape[1:] != (height, width):
            raise DataError(f"{images_path} declares images of shape "
                            f"{' x '.join(map(str, images_shape))} but {self.name} images are N x "
                            f"{height} x {width}; its header is damaged or it is another dataset's "
                            f"file: {self.repair_hint}")
        if len(labels_shape) != 1:
            raise DataError(f"{labels_path} declares labels of shape "
                            f"{' x '.join(map(str, labels_shape))}, not one label per image; its "
                            f"header is damaged or it is another dataset's file: {self.repair_hint}")
        if images_shape[0] != labels_shape[0]:
            raise DataError(f"{images_path} holds {images_shape[0]} images but {labels_path} holds "
                            f"{labels_shape[0]} labels; the files are from different splits: "
                            f"{self.repair_hint}")

    def check_labels(self, labels_path: str, labels: np.ndarray) -> None:
        """Every label must name one of the dataset's classes (it indexes the caption table)."""
        classes = num_classes(self.name)
        bad = np.flatnonzero((labels < 0) | (labels >= classes))
        if bad.size:
            more = f" (and {bad.size - 1} more)" if bad.size > 1 else ""
            raise DataError(f"{labels_path}: label {labels[bad[0]]} of example {bad[0]}{more} is not "
                            f"a class of {self.name}, whose labels are 0..{classes - 1}; the file is "
                            f"damaged or holds another dataset's labels: {self.repair_hint}")

    def check(self, directory: str, split: str, key: str) -> None:
        """Both files of `split` exist and their headers declare the dataset's shapes."""
        for filename in self.split_files[split]:
            path = os.path.join(directory, filename)
            if not os.path.isfile(path):
                raise DataError(f"{self.name} not found: {path} is missing (config.{key}="
                                f"{directory!r}); {self.install_hint}")
        images_path, labels_path = (os.path.join(directory, f) for f in self.split_files[split])
        self.check_shapes(images_path, read_idx_header(images_path, self.repair_hint)[1],
                          labels_path, read_idx_header(labels_path, self.repair_hint)[1])

    def load(self, directory: str, split: str) -> tuple[np.ndarray, np.ndarray]:
        images_path, labels_path = (os.path.join(directory, f) for f in self.split_files[split])
        images = read_idx(images_path, self.repair_hint)
        labels = read_idx(labels_path, self.repair_hint)
        self.check_shapes(images_path, images.shape, labels_path, labels.shape)
        labels = labels.astype(np.int32)
        self.check_labels(labels_path, labels)
        return images[..., None], labels  # add the channel axis

    def info(self, asset: str) -> DatasetInfo:
        return DatasetInfo(name=self.name, splits=tuple(self.split_files), load=self.load,
                           check=self.check, asset=asset, image_shape=self.image_shape)


FASHION_MNIST = IdxFiles(
    name="fashion_mnist",
    split_files={
        "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
        "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
    },
    install_hint=("install it with `sudo apt-get install dataset-fashion-mnist` (files land "
                  "in /usr/share/datasets/fashion-mnist), or download the four "
                  "*-ubyte.gz files and pass --config.data.dir=THAT_DIR"),
    repair_hint=("re-install it with `sudo apt-get install --reinstall dataset-fashion-mnist`"
                 ", or download the four *-ubyte.gz files again"),
    image_shape=(28, 28, 1),
)

def _load_coarse(directory: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST's images labelled with their class's coarse group (the asset's group_of)."""
    images, labels = FASHION_MNIST.load(directory, split)
    group_of = np.asarray(_asset("fashion_mnist_coarse.json")["group_of"], np.int32)
    return images, group_of[labels]


DATASETS: dict[str, DatasetInfo] = {
    "fashion_mnist": FASHION_MNIST.info("fashion_mnist.json"),
    # The same images, labelled and captioned by 5 coarse groups: top (t-shirt, pullover, coat,
    # shirt), bottoms (trousers), dress, footwear (sandal, sneaker, ankle boot), bag.
    "fashion_mnist_coarse": DatasetInfo(
        name="fashion_mnist_coarse", splits=tuple(FASHION_MNIST.split_files), load=_load_coarse,
        check=FASHION_MNIST.check, asset="fashion_mnist_coarse.json",
        image_shape=FASHION_MNIST.image_shape),
    # scikit-learn's 8x8 digits upsampled to 28x28 (vlmjax/data/digits.py); no files, no data.dir.
    "digits": DatasetInfo(name="digits", splits=digits.SPLITS, load=digits.load_digits_split,
                          check=digits.check_digits, asset="digits.json",
                          image_shape=(digits.IMAGE_SIZE, digits.IMAGE_SIZE, 1), reads_dir=False),
}


def get_dataset(name: str) -> DatasetInfo:
    """The registry entry for `name`, or a DataError listing the known datasets."""
    if name not in DATASETS:
        raise DataError(f"dataset {name!r} is not registered; choose one of "
                        f"{', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def check_dataset(name: str, directory: str, key: str = "data.dir", split: str | None = None,
                  image_size: int | None = None, channels: int | None = None) -> None:
    """Raises a DataError naming the missing or damaged file, the config key and how to get the
    data, from the files' headers alone (no data is read). With the model's `image_size` and
    `channels`, a ConfigError when the images differ from them (they are not resized)."""
    info = get_dataset(name)
    if split and split not in info.splits:
        raise DataError(f"{name} has no split {split!r}; choose one of {', '.join(info.splits)}")
    for s in [split] if split else info.splits:
        info.check(directory, s, key)
    _check_model_image(info, directory, image_size, channels)


def _check_model_image(info: DatasetInfo, directory: str, image_size: int | None,
                       channels: int | None) -> None:
    """ConfigError naming both sizes when the model's images differ from the dataset's."""
    height, width, depth = info.image_shape
    wrong = []
    if image_size is not None and image_size != height:
        wrong.append(("image_size", image_size, height))
    if channels is not None and channels != depth:
        wrong.append(("channels", channels, depth))
    if wrong:
        raise ConfigError(
            f"the {info.name} images{f' in {directory}' if info.reads_dir else ''} are "
            f"{height}x{width} with {depth} channel(s) "
            "(they are not resized), but " + " and ".join(
                f"model.image.{k}={v}" for k, v, _ in wrong) + "; set " + " ".join(
                f"--config.model.image.{k}={want}" for k, _, want in wrong)
            + ", or train on images of the model's size (data.name='image_text' resizes)")


def _asset(filename: str) -> dict:
    """A JSON asset of vlmjax/data/assets."""
    return json.loads(resources.files("vlmjax.data").joinpath("assets", filename).read_text())


def num_classes(name: str) -> int:
    """How many classes the dataset has (its asset's class names)."""
    return len(_asset(get_dataset(name).asset)["classnames"])


def load_split(name: str, directory: str, split: str, image_size: int | None = None,
               channels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All images (uint8 [N, H, W, C]) and labels (int32 [N]) of one split; with the model's
    `image_size` and `channels`, a ConfigError first if the images differ from them."""
    check_dataset(name, directory, split=split, image_size=image_size, channels=channels)
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
    asset = _asset(get_dataset(name).asset)
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
    asset = _asset(get_dataset(name).asset)
    return asset["caption_names"], asset["caption_templates"]
