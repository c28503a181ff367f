"""scikit-learn's bundled handwritten digits (`load_digits`) as a 28x28 on-disk dataset: a new
domain with new classes for models pre-trained on Fashion-MNIST, readable without any download.

The 1,797 images are 8x8 with values 0..16 (ink is high, like MNIST and Fashion-MNIST, whose
object is bright). Each is scaled to 0..255, upsampled 3x bilinearly to 24x24 and centred in a
28x28 frame with a 2-pixel blank margin (MNIST also leaves a margin around its digits), so the
demo models read them as they read Fashion-MNIST. The split is fixed and needs no random
generator: within each class, in scikit-learn's order, every third image (positions 2, 5, 8, ...)
is `test` (596 images), the rest `train` (1,201): both hold every class and every writer block.
"""

import functools
import importlib.util

import numpy as np

from vlmjax.errors import DataError

SPLITS = ("train", "test")
SOURCE_SIZE, SCALE, MARGIN = 8, 3, 2
IMAGE_SIZE = SOURCE_SIZE * SCALE + 2 * MARGIN  # 28
TEST_EVERY = 3  # every third image of each class is a test image
INSTALL_HINT = "pip install scikit-learn"


def require_sklearn() -> None:
    """DataError naming the install command when scikit-learn (an optional dependency) is missing."""
    if importlib.util.find_spec("sklearn") is None:
        raise DataError(f"the digits dataset is scikit-learn's load_digits, and scikit-learn is not "
                        f"installed; `{INSTALL_HINT}` (or `pip install -e .[test]`)")


def linear_weights(size_in: int, size_out: int) -> np.ndarray:
    """[size_out, size_in] bilinear interpolation weights with pixel centres aligned (half-pixel
    offsets, edges clamped): PIL's and jax.image.resize's convention for upsampling."""
    centres = (np.arange(size_out) + 0.5) * size_in / size_out - 0.5
    centres = np.clip(centres, 0, size_in - 1)
    low = np.floor(centres).astype(np.int64)
    high = np.minimum(low + 1, size_in - 1)
    frac = centres - low
    weights = np.zeros((size_out, size_in))
    np.add.at(weights, (np.arange(size_out), low), 1 - frac)
    np.add.at(weights, (np.arange(size_out), high), frac)
    return weights


def upsample(images: np.ndarray) -> np.ndarray:
    """[N, 8, 8] values 0..16 -> uint8 [N, 28, 28, 1]: bilinear 3x, then a blank margin."""
    weights = linear_weights(SOURCE_SIZE, SOURCE_SIZE * SCALE)
    scaled = np.asarray(images, np.float64) * (255.0 / 16.0)
    resized = np.einsum("oi,nij,pj->nop", weights, scaled, weights)
    pixels = np.clip(np.rint(resized), 0, 255).astype(np.uint8)
    return np.pad(pixels, ((0, 0), (MARGIN, MARGIN), (MARGIN, MARGIN)))[..., None]


def split_rows(labels: np.ndarray, split: str) -> np.ndarray:
    """Indices of `split`'s images: every TEST_EVERY-th image of each class (counted in the
    dataset's order) is a test image."""
    rank = np.empty(len(labels), np.int64)  # position of each image within its class
    for k in np.unique(labels):
        members = np.flatnonzero(labels == k)
        rank[members] = np.arange(len(members))
    is_test = rank % TEST_EVERY == TEST_EVERY - 1
    return np.flatnonzero(is_test if split == "test" else ~is_test)


@functools.cache
def _all_digits() -> tuple[np.ndarray, np.ndarray]:
    require_sklearn()
    from sklearn.datasets import load_digits  # optional dependency: imported only when used
    bunch = load_digits()
    images = upsample(bunch.images)
    labels = np.asarray(bunch.target, np.int32)
    images.flags.writeable = labels.flags.writeable = False  # shared by every caller
    return images, labels


def load_digits_split(directory: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [N, 28, 28, 1] images and int32 [N] labels of `split` (`directory` is unused: the
    data ships with scikit-learn)."""
    del directory
    if split not in SPLITS:
        raise DataError(f"digits has no split {split!r}; choose one of {', '.join(SPLITS)}")
    images, labels = _all_digits()
    rows = split_rows(labels, split)
    return images[rows], labels[rows]


def check_digits(directory: str, split: str, key: str) -> None:
    """The split exists and scikit-learn is importable (nothing is read)."""
    del directory, key
    if split not in SPLITS:
        raise DataError(f"digits has no split {split!r}; choose one of {', '.join(SPLITS)}")
    require_sklearn()
