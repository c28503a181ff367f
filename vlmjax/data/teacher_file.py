"""What the sources that train on a teacher's precomputed file share (detection targets,
segmentation pseudo-labels): the config checks that pin the file to the run, and the endless
batch stream over scene canvases.

The file's `meta` records the scene set, canvas side, teacher directory and step it was
computed for; a run whose config disagrees is refused in one line, naming the fix.
"""

import os
from collections.abc import Mapping
from typing import Any

import grain

from vlmjax.data.datasets import check_dataset
from vlmjax.data.scenes_source import MIN_CANVAS, NUM_BATCHES
from vlmjax.options import fail


def check_teacher_file(cfg: Mapping, name: str, meta: Mapping, embed_width: int, key: str,
                       what: str, task: str) -> None:
    """Raises ConfigError unless the run trains on the scenes' train split at the file's canvas
    side, with the teacher's embedding width, and names the file's teacher and step (or none).
    `key`: the config key of the file (e.g. data.targets); `what`: the file's contents in a
    message ("targets"); `task`: what trains on it ("detection")."""
    data, image = cfg["data"], cfg["model"]["image"]
    if data["split"] != "train":
        fail("data.split", f"is {data['split']!r}; {task} trains on the scenes' 'train' split",
             "set --config.data.split=train")
    if image["channels"] != 1:
        fail("model.image.channels", f"is {image['channels']} but scenes are grayscale",
             "set --config.model.image.channels=1")
    if image["image_size"] < MIN_CANVAS:
        fail("model.image.image_size", f"is {image['image_size']}; canvases have the model's size",
             f"use at least {MIN_CANVAS}")
    check_dataset("fashion_mnist", data["dir"], key="data.dir", split="train")
    if meta["dataset"] != name or meta["canvas"] != image["image_size"]:
        fail(key, f"was computed for {meta['dataset']} canvases of side {meta['canvas']}, not "
             f"{name} at model.image.image_size={image['image_size']}",
             f"compute the {what} for this config")
    if cfg["model"]["embed_dim"] != embed_width:
        fail("model.embed_dim", f"is {cfg['model']['embed_dim']} but the teacher's embeddings "
             f"have {embed_width} dimensions", f"set --config.model.embed_dim={embed_width}")
    if data["teacher"] and os.path.abspath(data["teacher"]) != meta["teacher"]:
        fail("data.teacher", f"is {data['teacher']!r} but {key} comes from {meta['teacher']!r}",
             f"point {key} at that teacher's {what}")
    if data["teacher_step"] >= 0 and data["teacher_step"] != meta["step"]:
        fail("data.teacher_step", f"is {data['teacher_step']} but {key} comes from step "
             f"{meta['step']}", f"compute the {what} for the pinned step")


def batch_stream(maker: grain.transforms.MapWithIndex, data: Mapping) -> Any:
    """The endless, checkpointable iterator of `maker`'s batches (batch i = maker(i))."""
    ds = grain.MapDataset.range(NUM_BATCHES).map_with_index(maker)
    options = grain.ReadOptions(num_threads=data["num_threads"],
                                prefetch_buffer_size=max(data["prefetch"], 1))
    return iter(ds.to_iter_dataset(options))
