"""Training source of a labelled on-disk dataset (Fashion-MNIST): each image with a random
caption of its class (class-name paraphrases x templates, `data.captions`)."""

import dataclasses
from collections.abc import Mapping
from typing import Any

from vlmjax.data.captions import build_caption_table, caption_texts
from vlmjax.data.datasets import caption_vocabulary, check_dataset, load_split
from vlmjax.data.pipeline import train_dataset, train_iterator
from vlmjax.data.train_source import TrainSource
from vlmjax.options import require_non_negative, require_positive
from vlmjax.tokenizers import Tokenizer

OPTIONS = {
    "split": "train",
    "flip": False,  # random horizontal flip
    "translate": 0,  # random shift by up to this many pixels (zero padded)
    "num_threads": 2,  # grain read threads
}


@dataclasses.dataclass(frozen=True)
class LabelledCaptions:
    """Captioned batches of the registered on-disk dataset `dataset` (`data.datasets`)."""

    dataset: str

    def check(self, cfg: Mapping) -> None:
        data = cfg["data"]
        require_non_negative(data, "data", "translate", "num_threads")
        require_positive(data, "data", "prefetch")
        image = cfg["model"]["image"]  # on-disk images are not resized: the model must fit them
        check_dataset(self.dataset, data["dir"], key="data.dir", split=data["split"],
                      image_size=image["image_size"], channels=image["channels"])

    def caption_texts(self, cfg: Mapping) -> list[str]:
        """Every caption the source can draw: what a trained tokenizer learns its vocabulary on."""
        return caption_texts(*caption_vocabulary(self.dataset))[0]

    def build(self, cfg: Mapping, tokenizer: Tokenizer, rows: slice, process_index: int,
              process_count: int) -> Any:
        del process_index, process_count  # every process walks the same index stream
        data = cfg["data"]
        images, labels = load_split(self.dataset, data["dir"], data["split"])
        table = build_caption_table(*caption_vocabulary(self.dataset), tokenizer,
                                    cfg["tokenizer"]["context_length"])
        dataset = train_dataset(images, labels, table, global_batch_size=cfg["train"]["batch_size"],
                                seed=cfg["seed"], rows=rows, flip=data["flip"],
                                translate=data["translate"])
        return train_iterator(dataset, data["num_threads"], data["prefetch"])


def labelled_captions(dataset: str) -> TrainSource:
    """The registry entry training on captioned images of `dataset`."""
    source = LabelledCaptions(dataset)
    return TrainSource(options=OPTIONS, check=source.check, build=source.build,
                       caption_texts=source.caption_texts)
