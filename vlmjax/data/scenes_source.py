"""Training source of Fashion-MNIST scenes (`data.scenes`): captioned canvases generated on the fly.

Global batch k holds scenes k * B .. (k + 1) * B - 1 of the "train" split, each a pure function
of (seed, its position), so the iterator's state is the batch counter and a resumed run reads
exactly the batches it would have read; each process generates only its rows. The canvas side is
`model.image.image_size` (one channel). With `data.phrases` every example also carries its
item phrases tokenized alone ("phrases" int32 [b, max_items, phrase_length], "phrase_mask"
bool, all False for absent items): what local (region-word) objectives align patches with.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import grain
import numpy as np

from vlmjax.data.datasets import check_dataset, load_split
from vlmjax.data.scenes import SCENE_SETS, ItemPool, SceneSet, get_scene_set, scene, scene_texts, split_pool
from vlmjax.data.train_source import TrainSource
from vlmjax.options import fail, require_positive
from vlmjax.tokenizers import Tokenizer

OPTIONS = {
    "split": "train",
    "phrases": False,  # also yield each item's phrase, tokenized alone (local objectives)
    "phrase_length": 8,  # tokens per phrase
    "num_threads": 1,  # grain threads generating batches
}
NUM_BATCHES = 2 ** 40  # the stream is endless in practice
MIN_CANVAS = 16


@dataclasses.dataclass
class SceneBatch(grain.transforms.MapWithIndex):
    """Global batch k -> this process's rows: canvases, captions and (optionally) phrases."""

    spec: SceneSet
    pool: ItemPool
    size: int
    batch_size: int
    rows: slice
    seed: int
    tokenizer: Tokenizer
    context_length: int
    phrase_length: int = 0  # 0: no phrases

    def map_with_index(self, index: int, element: Any) -> dict:
        del element
        positions = index * self.batch_size + np.arange(self.batch_size)[self.rows]
        scenes = [scene(self.spec, self.pool, "train", self.size, int(p), self.seed)
                  for p in positions]
        ids, mask = self.tokenizer.encode([s.caption for s in scenes], self.context_length)
        batch = {"image": np.stack([s.image for s in scenes])[..., None], "text": ids,
                 "text_mask": mask, "label": np.full((len(scenes),), -1, np.int32)}
        if self.phrase_length:
            batch.update(phrase_batch(self.tokenizer, [s.phrases for s in scenes],
                                      self.spec.max_items, self.phrase_length))
        return batch


def phrase_batch(tokenizer: Tokenizer, phrases: list[tuple[str, ...]], max_items: int,
                 length: int) -> dict[str, np.ndarray]:
    """{"phrases": int32 [b, max_items, length], "phrase_mask": bool [b, max_items, length]}."""
    flat = [p for example in phrases for p in example]
    ids, mask = tokenizer.encode(flat, length) if flat else (
        np.zeros((0, length), np.int32), np.zeros((0, length), bool))
    out_ids = np.zeros((len(phrases), max_items, length), np.int32)
    out_mask = np.zeros((len(phrases), max_items, length), bool)
    at = 0
    for row, example in enumerate(phrases):
        k = len(example)
        out_ids[row, :k], out_mask[row, :k] = ids[at:at + k], mask[at:at + k]
        at += k
    return {"phrases": out_ids, "phrase_mask": out_mask}


@dataclasses.dataclass(frozen=True)
class ScenesCaptions:
    """The training source of scene set `name` (`data.scenes.SCENE_SETS`)."""

    name: str

    def check(self, cfg: Mapping) -> None:
        data, image = cfg["data"], cfg["model"]["image"]
        require_positive(data, "data", "phrase_length", "prefetch")
        if data["split"] != "train":
            fail("data.split", f"is {data['split']!r}; {self.name} trains on its 'train' split",
                 "set --config.data.split=train")
        if image["channels"] != 1:
            fail("model.image.channels", f"is {image['channels']} but scenes are grayscale",
                 "set --config.model.image.channels=1")
        if image["image_size"] < MIN_CANVAS:
            fail("model.image.image_size", f"is {image['image_size']}; scene canvases have the "
                 "model's size", f"use at least {MIN_CANVAS}, e.g. 56")
        check_dataset("fashion_mnist", data["dir"], key="data.dir", split="train")

    def caption_texts(self, cfg: Mapping) -> list[str]:
        del cfg
        return scene_texts()

    def build(self, cfg: Mapping, tokenizer: Tokenizer, rows: slice, process_index: int,
              process_count: int) -> Any:
        del process_index, process_count  # rows say which examples this process generates
        data = cfg["data"]
        images, labels = load_split("fashion_mnist", data["dir"], "train")
        spec = get_scene_set(self.name)
        maker = SceneBatch(spec, split_pool(images, labels, "train"),
                           cfg["model"]["image"]["image_size"], cfg["train"]["batch_size"], rows,
                           cfg["seed"], tokenizer, cfg["tokenizer"]["context_length"],
                           data["phrase_length"] if data["phrases"] else 0)
        ds = grain.MapDataset.range(NUM_BATCHES).map_with_index(maker)
        options = grain.ReadOptions(num_threads=data["num_threads"],
                                    prefetch_buffer_size=max(data["prefetch"], 1))
        return iter(ds.to_iter_dataset(options))


def scenes_source(name: str) -> TrainSource:
    """The registry entry training on scene set `name`."""
    if name not in SCENE_SETS:
        raise ValueError(f"unknown scene set {name!r}")
    source = ScenesCaptions(name)
    return TrainSource(options=OPTIONS, check=source.check, build=source.build,
                       caption_texts=source.caption_texts)
