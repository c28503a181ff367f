"""The training-data registry (`config.data.name`) and the keys of the `data` section.

Adding a training source is one module defining its TrainSource and one line here; a new
labelled on-disk dataset (`data.datasets`) trains through `labelled_captions(name)`.
"""

from collections.abc import Mapping

from vlmjax.data import image_text_config
from vlmjax.data.detection_source import detection_source
from vlmjax.data.labelled_source import labelled_captions
from vlmjax.data.pseudo_seg_source import pseudo_seg_source
from vlmjax.data.scenes_source import scenes_source
from vlmjax.data.train_source import TrainSource
from vlmjax.options import fail
from vlmjax.registry import Registry

TRAIN_SOURCES: Registry[TrainSource] = Registry("data.name", {
    "fashion_mnist": labelled_captions("fashion_mnist"),
    # The same images captioned by 5 coarse groups only (top, bottoms, dress, footwear, bag;
    # assets/fashion_mnist_coarse.json): transfer to the 10 classes has something to add. The
    # tokenizer also learns the 10 classes' prompts (their names, never seen with an image).
    "fashion_mnist_coarse": labelled_captions("fashion_mnist_coarse", learn_prompts="fashion_mnist"),
    "image_text": image_text_config.IMAGE_TEXT,
    # Canvases of 1-4 Fashion-MNIST items with captions naming them (data/scenes.py); the
    # canvas side is model.image.image_size; data.phrases adds each item's phrase.
    "fashion_mnist_scenes": scenes_source("fashion_mnist_scenes"),
    "fashion_mnist_scenes_grid": scenes_source("fashion_mnist_scenes_grid"),
    # The same canvases with the boxes of their base-class items and a teacher's targets
    # (open-vocabulary detection; data.targets from python -m vlmjax.train.teacher_targets).
    "fashion_mnist_scenes_detection": detection_source("fashion_mnist_scenes"),
    # The same canvases with a teacher's dense pseudo-labels of every class (open-vocabulary
    # segmentation, MaskCLIP+; data.pseudo_labels from python -m vlmjax.train.teacher_pseudo_labels).
    "fashion_mnist_scenes_pseudo_seg": pseudo_seg_source("fashion_mnist_scenes"),
})
# Keys of `data` every source has (each source adds its own options).
DATA_OPTIONS = {
    "name": "fashion_mnist",
    # Directory of on-disk datasets (IDX files): the training source's and, by default, the
    # evaluators' (evals.<name>.data_dir overrides it there).
    "dir": "/usr/share/datasets/fashion-mnist",
    # Normalisation applied on device: one value for every channel, or one per channel (a list
    # as long as model.image.channels, e.g. CLIP's (0.48145466, 0.4578275, 0.40821073)).
    "image_mean": 0.5,
    "image_std": 0.5,
    "prefetch": 2,  # batches prepared ahead, on device
}
# Keys that take a float or one float per channel.
PER_CHANNEL_KEYS = ("data.image_mean", "data.image_std")


def get_train_source(data: Mapping) -> TrainSource:
    """The source `data.name` names (ConfigError listing the registered ones otherwise)."""
    return TRAIN_SOURCES.get_or_fail(data["name"])


def data_schema(data: Mapping) -> dict:
    """Every key of the `data` section with its default, for the source it names."""
    name = data.get("name", DATA_OPTIONS["name"])
    return {**DATA_OPTIONS, **TRAIN_SOURCES.get_or_fail(name).options, "name": name}


def check_data(cfg: Mapping) -> None:
    """The per-channel statistics against the image channels, then the source's own checks."""
    channels = cfg["model"]["image"]["channels"]
    for key in PER_CHANNEL_KEYS:
        value = cfg["data"][key.split(".")[1]]
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if len(values) not in (1, channels):
            fail(key, f"has {len(values)} values but model.image.channels={channels}",
                 f"give one value or {channels}")
        if key.endswith("std") and min(values) <= 0:
            fail(key, "must be positive", "use the dataset's pixel std, e.g. 0.5")
    get_train_source(cfg["data"]).check(cfg)
