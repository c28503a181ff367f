"""Training source of a labelled on-disk dataset (Fashion-MNIST): each image with a random
caption of its class (class-name paraphrases x templates, `data.captions`).

`data.fraction` trains on a subset, the first round(fraction x N) images of a fixed order that
depends on nothing but N (not on the seed), so a smaller fraction's images are always among a
larger one's and every seed of a data-scaling study sees the same images.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from vlmjax.data.captions import build_caption_table, caption_texts
from vlmjax.data.datasets import caption_vocabulary, check_dataset, dataset_prompts, load_split
from vlmjax.data.pipeline import example_uniforms, train_dataset, train_iterator
from vlmjax.data.train_source import TrainSource
from vlmjax.errors import DataError
from vlmjax.options import fail, require_non_negative, require_positive
from vlmjax.tokenizers import Tokenizer

OPTIONS = {
    "split": "train",
    # Train on this fraction of the split, in (0, 1]: the first round(fraction x N) images of a
    # fixed, seed-independent order (nested: 0.1's images are among 0.3's).
    "fraction": 1.0,
    "flip": False,  # random horizontal flip
    "translate": 0,  # random shift by up to this many pixels (zero padded)
    "num_threads": 2,  # grain read threads
}
SUBSET_ORDER_KEY = 20_240_229  # the hash key of the fixed order (a constant: never the run's seed)


def subset_rows(n: int, fraction: float) -> np.ndarray:
    """Indices of the first round(fraction x n) images of a fixed pseudo-random order of n.

    The order sorts a counter-based hash of each index (`pipeline.example_uniforms`, splitmix64
    keyed by a constant), so it is the same on every machine and NumPy version, and the subsets
    of two fractions are nested. Sorted, so the images are read in their stored order.
    """
    count = round(fraction * n)
    if count < 1:
        raise DataError(f"data.fraction={fraction} of {n} images is none; use at least {1 / n:.2g}")
    order = np.argsort(example_uniforms(SUBSET_ORDER_KEY, np.arange(n), 1)[:, 0], kind="stable")
    return np.sort(order[:count])


@dataclasses.dataclass(frozen=True)
class LabelledCaptions:
    """Captioned batches of the registered on-disk dataset `dataset` (`data.datasets`).

    `learn_prompts`: a dataset whose zero-shot prompts a trained tokenizer learns too, so the
    class names a later transfer evaluation uses are tokens of its vocabulary even where the
    captions never say them (as a web-trained BPE knows words its image-text pairs lack); the
    model never sees them with an image.
    """

    dataset: str
    learn_prompts: str = ""

    def check(self, cfg: Mapping) -> None:
        data = cfg["data"]
        require_non_negative(data, "data", "translate", "num_threads")
        require_positive(data, "data", "prefetch")
        if not 0 < data["fraction"] <= 1:
            fail("data.fraction", f"is {data['fraction']}", "use a fraction of the split in (0, 1]")
        image = cfg["model"]["image"]  # on-disk images are not resized: the model must fit them
        check_dataset(self.dataset, data["dir"], key="data.dir", split=data["split"],
                      image_size=image["image_size"], channels=image["channels"])

    def caption_texts(self, cfg: Mapping) -> list[str]:
        """Every caption the source can draw (and every zero-shot prompt of `learn_prompts`):
        what a trained tokenizer learns its vocabulary on."""
        texts = caption_texts(*caption_vocabulary(self.dataset))[0]
        if self.learn_prompts:
            classnames, templates = dataset_prompts(self.learn_prompts)
            texts += [t.format(c=c) for c in classnames for t in templates]
        return texts

    def build(self, cfg: Mapping, tokenizer: Tokenizer, rows: slice, process_index: int,
              process_count: int) -> Any:
        del process_index, process_count  # every process walks the same index stream
        data = cfg["data"]
        images, labels = load_split(self.dataset, data["dir"], data["split"])
        if data["fraction"] < 1:
            keep = subset_rows(len(labels), data["fraction"])
            images, labels = images[keep], labels[keep]
        table = build_caption_table(*caption_vocabulary(self.dataset), tokenizer,
                                    cfg["tokenizer"]["context_length"])
        dataset = train_dataset(images, labels, table, global_batch_size=cfg["train"]["batch_size"],
                                seed=cfg["seed"], rows=rows, flip=data["flip"],
                                translate=data["translate"])
        return train_iterator(dataset, data["num_threads"], data["prefetch"])


def labelled_captions(dataset: str, learn_prompts: str = "") -> TrainSource:
    """The registry entry training on captioned images of `dataset` (see LabelledCaptions)."""
    source = LabelledCaptions(dataset, learn_prompts)
    return TrainSource(options=OPTIONS, check=source.check, build=source.build,
                       caption_texts=source.caption_texts)
