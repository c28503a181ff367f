"""Fashion-MNIST scenes: canvases holding 1-4 real Fashion-MNIST items, with per-pixel labels,
boxes and captions naming the items, generated deterministically from the IDX files.

A scene is a pure function of (its scene set, the item pool, the canvas size, a key): the same
key always gives the same canvas, on any machine (NumPy's PCG64 seeded through SeedSequence),
so training streams resume exactly and evaluation canvases need no files of their own.
- items: drawn uniformly from the split's images; each is resized (bilinear) to a square of
  side `min_size..max_size` x the canvas side and placed where it overlaps no other item
  ("random" layout; an item that finds no free place in 50 tries is left out), or fills a cell
  of a 2x2 grid ("grid" layout);
- mask: an item's pixels brighter than `mask_threshold` carry its class + 1, all others 0
  (background), the VOC convention; boxes are the tight [x0, y0, x1, y1) boxes of those pixels;
- caption: the items named by random paraphrases of their classes with an article ("a sandal",
  "an ankle boot"), listed left to right ("a sandal, a bag and a coat") or, for two items,
  by their spatial relation ("a sandal to the left of a bag"), in a random scene template;
  `phrases` are the item phrases alone, what a noun-phrase parser would extract from it.
Splits: "train" draws items from the first 11/12 of Fashion-MNIST's train split, "val" from its
last 1/12 (held out: thresholds are calibrated there, never on the test set), "test" and
"test_single" (exactly one item per canvas: image-level zero-shot) from its test split.
"""

import dataclasses
import functools
import json
from importlib import resources

import numpy as np
from PIL import Image

from vlmjax.errors import DataError

BACKGROUND = 0  # mask value of background pixels; an item of class k is k + 1
IGNORE = 255  # mask value excluded from every metric (VOC's boundaries; unused by scenes)
LAYOUTS = ("random", "grid")
PLACEMENT_TRIES = 50
# split -> (Fashion-MNIST split its items come from, first and last twelfth of it, key).
SPLITS = {"train": ("train", 0, 11, 0), "val": ("train", 11, 12, 1),
          "test": ("test", 0, 12, 2), "test_single": ("test", 0, 12, 3)}


@dataclasses.dataclass(frozen=True)
class SceneSet:
    """A registered family of scenes (its name is the dataset name)."""

    name: str
    min_items: int
    max_items: int
    layout: str = "random"
    min_size: float = 0.3  # item side as a fraction of the canvas side ("random" layout)
    max_size: float = 0.55
    mask_threshold: int = 16  # item pixels above it are labelled with the item's class


SCENE_SETS = {
    "fashion_mnist_scenes": SceneSet("fashion_mnist_scenes", 1, 4),
    # The calibration setting: 1-3 items, each filling a cell of a 2x2 grid.
    "fashion_mnist_scenes_grid": SceneSet("fashion_mnist_scenes_grid", 1, 3, layout="grid"),
}


@dataclasses.dataclass(frozen=True)
class Scene:
    """One canvas with its annotations."""

    image: np.ndarray  # uint8 [S, S]
    mask: np.ndarray  # uint8 [S, S]: BACKGROUND or class + 1
    boxes: np.ndarray  # int32 [k, 4]: x0, y0, x1, y1 (exclusive) of each item's labelled pixels
    labels: np.ndarray  # int32 [k]: Fashion-MNIST class of each item
    caption: str
    phrases: tuple[str, ...]  # one per item, in the order of `labels`


@dataclasses.dataclass(frozen=True)
class ItemPool:
    """The Fashion-MNIST images scenes of one split draw their items from."""

    images: np.ndarray  # uint8 [N, 28, 28]
    labels: np.ndarray  # int32 [N]


def get_scene_set(name: str) -> SceneSet:
    """The registered scene set `name` (DataError listing them otherwise)."""
    if name not in SCENE_SETS:
        raise DataError(f"scene set {name!r} is not registered; choose one of "
                        f"{', '.join(SCENE_SETS)}")
    return SCENE_SETS[name]


def is_scene_set(name: str) -> bool:
    return name in SCENE_SETS


@functools.cache
def scene_vocabulary() -> dict:
    """The scenes asset (class names with background, prompts, caption templates) with
    Fashion-MNIST's per-class paraphrases under "caption_names"."""
    files = resources.files("vlmjax.data").joinpath("assets")
    scenes = json.loads(files.joinpath("fashion_mnist_scenes.json").read_text())
    names = json.loads(files.joinpath("fashion_mnist.json").read_text())["caption_names"]
    return {**scenes, "caption_names": names}


def split_pool(images: np.ndarray, labels: np.ndarray, split: str) -> ItemPool:
    """The items of scene split `split` among Fashion-MNIST split images [N, 28, 28(, 1)]."""
    if split not in SPLITS:
        raise DataError(f"scenes have no split {split!r}; choose one of {', '.join(SPLITS)}")
    _, first, last, _ = SPLITS[split]
    n = len(labels)
    lo, hi = n * first // 12, n * last // 12
    if hi <= lo:
        raise DataError(f"scene split {split!r} needs items but its part of the {n} images is "
                        "empty; use a larger Fashion-MNIST split")
    return ItemPool(images[lo:hi].reshape(hi - lo, 28, 28), labels[lo:hi].astype(np.int32))


def scene_rng(split: str, seed: int, index: int) -> np.random.Generator:
    """The generator of scene `index` of `split` (and the run's `seed` for training)."""
    return np.random.default_rng([SPLITS[split][3], seed, index])


def article(name: str) -> str:
    """The item phrase of a class paraphrase: "a sandal", "an ankle boot", "trousers"."""
    if name.endswith("s") and not name.endswith("ss") and not name.startswith("pair of"):
        return name  # a plural: trousers, pants, slacks
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _place_random(rng: np.random.Generator, count: int, size: int, spec: SceneSet
                  ) -> list[tuple[int, int, int]]:
    """(x0, y0, side) of up to `count` items whose squares do not overlap."""
    lo, hi = max(4, round(spec.min_size * size)), max(4, round(spec.max_size * size))
    placed: list[tuple[int, int, int]] = []
    for _ in range(count):
        for _ in range(PLACEMENT_TRIES):
            side = int(rng.integers(lo, min(hi, size) + 1))
            x, y = (int(v) for v in rng.integers(0, size - side + 1, size=2))
            if all(x + side <= px or px + ps <= x or y + side <= py or py + ps <= y
                   for px, py, ps in placed):
                placed.append((x, y, side))
                break
    return placed


def _place_grid(rng: np.random.Generator, count: int, size: int) -> list[tuple[int, int, int]]:
    cell = size // 2
    cells = rng.permutation(4)[:count]
    return [(int(c % 2) * cell, int(c // 2) * cell, cell) for c in cells]


def _caption(rng: np.random.Generator, phrases: list[str], centres: np.ndarray) -> str:
    """Names the items left to right, or by the relation of the two items."""
    vocab = scene_vocabulary()
    if len(phrases) == 2:
        first = int(rng.integers(2))
        a, b = first, 1 - first
        dx, dy = centres[a] - centres[b]
        horizontal = abs(dx) >= abs(dy)
        relation = ("left" if dx < 0 else "right") if horizontal else (
            "above" if dy < 0 else "below")
        items = vocab["relations"][relation].format(a=phrases[a], b=phrases[b])
    else:
        order = np.argsort(centres[:, 0], kind="stable")
        named = [phrases[i] for i in order]
        listed = named[0] if len(named) == 1 else ", ".join(named[:-1]) + " and " + named[-1]
        template = vocab["list_templates"][int(rng.integers(len(vocab["list_templates"])))]
        items = template.format(items=listed) if len(named) > 1 else listed
    templates = vocab["scene_templates"]
    return templates[int(rng.integers(len(templates)))].format(items=items)


def compose_scene(rng: np.random.Generator, pool: ItemPool, size: int, spec: SceneSet,
                  count: int | None = None) -> Scene:
    """One canvas of side `size` from `pool` (`count` items, else min_items..max_items)."""
    if count is None:
        count = int(rng.integers(spec.min_items, spec.max_items + 1))
    if spec.layout == "grid":
        places = _place_grid(rng, min(count, 4), size)
    else:
        places = _place_random(rng, count, size, spec)
    image = np.zeros((size, size), np.uint8)
    mask = np.zeros((size, size), np.uint8)
    items = rng.integers(0, len(pool.labels), size=len(places))
    names = scene_vocabulary()["caption_names"]
    boxes, labels, phrases, centres = [], [], [], []
    for item, (x, y, side) in zip(items, places, strict=True):
        label = int(pool.labels[item])
        pixels = pool.images[item]
        if side != pixels.shape[0]:
            pixels = np.asarray(Image.fromarray(pixels).resize((side, side), Image.BILINEAR))
        region = image[y:y + side, x:x + side]
        np.maximum(region, pixels, out=region)
        on = pixels > spec.mask_threshold
        mask[y:y + side, x:x + side][on] = label + 1
        rows, cols = np.flatnonzero(on.any(axis=1)), np.flatnonzero(on.any(axis=0))
        if rows.size == 0:  # an item too dark to label: a box of its square, no mask pixels
            boxes.append((x, y, x + side, y + side))
        else:
            boxes.append((x + cols[0], y + rows[0], x + cols[-1] + 1, y + rows[-1] + 1))
        labels.append(label)
        choices = names[label]
        phrases.append(article(choices[int(rng.integers(len(choices)))]))
        centres.append((x + side / 2, y + side / 2))
    caption = _caption(rng, phrases, np.asarray(centres, np.float64).reshape(-1, 2))
    return Scene(image=image, mask=mask, boxes=np.asarray(boxes, np.int32).reshape(-1, 4),
                 labels=np.asarray(labels, np.int32), caption=caption, phrases=tuple(phrases))


def scene(spec: SceneSet, pool: ItemPool, split: str, size: int, index: int, seed: int = 0
          ) -> Scene:
    """Scene `index` of `split` (test_single: one item each), a pure function of its arguments."""
    rng = scene_rng(split, seed, index)
    return compose_scene(rng, pool, size, spec, count=1 if split == "test_single" else None)


def scene_texts(num_random: int = 2000) -> list[str]:
    """Texts a trained tokenizer learns the scenes' words from: every paraphrase in every scene
    template, random multi-item captions, the zero-shot and background prompts."""
    vocab = scene_vocabulary()
    texts = [t.format(items=article(name)) for names in vocab["caption_names"] for name in names
             for t in vocab["scene_templates"]]
    rng = np.random.default_rng(20_240_521)
    for _ in range(num_random):
        count = int(rng.integers(2, 5))
        phrases = [article(names[int(rng.integers(len(names)))]) for names in
                   (vocab["caption_names"][int(k)] for k in rng.integers(0, 10, size=count))]
        texts.append(_caption(rng, phrases, rng.uniform(0, 1, size=(count, 2))))
    texts += [t.format(c=c) for c in vocab["classnames"][1:] for t in vocab["templates"]]
    return texts + list(vocab["background_prompts"])
