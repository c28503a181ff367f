"""COCO and Flickr30k retrieval sets in Karpathy's splits, prepared as TFDS array_record files.

Neither is readable through TFDS without TensorFlow (TFDS's `coco_captions` builder imports it;
Flickr30k has no builder), so this is a small TFDS builder of our own. It reads Karpathy's
split files (`dataset_coco.json`, `dataset_flickr30k.json`: every image with its split and
sentences) and the images from a manual-download directory, and writes one example per image:
the encoded image, its id and all of its captions (COCO's Karpathy test split: 5,000 images,
25,010 captions; Flickr30k's: 1,000 images, 5,000 captions).

    python -m vlmjax.data.karpathy_retrieval --config coco --manual_dir DIR [--data_dir D]

DIR holds the split JSON and the images: for COCO `dataset_coco.json`, `val2014/`, `train2014/`
(Karpathy's file names them by folder); for Flickr30k `dataset_flickr30k.json` and
`flickr30k-images/`.
"""

import json
import os
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from vlmjax.data.manual_download import build_from_manual, prepare_cli
from vlmjax.errors import DataError

CONFIGS = {  # config -> (split file, image folder used when an entry has no `filepath`)
    "coco": ("dataset_coco.json", ""),
    "flickr30k": ("dataset_flickr30k.json", "flickr30k-images"),
}
SPLITS = {"train": ("train", "restval"), "val": ("val",), "test": ("test",)}


class KarpathyRetrieval(tfds.core.GeneratorBasedBuilder):
    """Images with all their captions, in Karpathy's train / val / test splits."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=name) for name in CONFIGS]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put Karpathy's split file and the images in the manual directory: for coco "
        "dataset_coco.json, val2014/ and train2014/ (cocodataset.org); for flickr30k "
        "dataset_flickr30k.json and flickr30k-images/. Karpathy's split files come in "
        "caption_datasets.zip (cs.stanford.edu/people/karpathy/deepimagesent).")

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "image_id": tfds.features.Text(),
            "captions": tfds.features.Sequence(tfds.features.Text()),
        }))

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        split_file, _ = CONFIGS[self.builder_config.name]
        path = os.path.join(dl_manager.manual_dir, split_file)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} is missing. {self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
        with open(path) as f:
            images = json.load(f)["images"]
        present = {entry["split"] for entry in images}
        return {split: self._generate_examples(dl_manager.manual_dir, images, names)
                for split, names in SPLITS.items() if present & set(names)}

    def _generate_examples(self, root: str, images: list, split_names: tuple[str, ...]):
        _, folder = CONFIGS[self.builder_config.name]
        for entry in images:
            if entry["split"] not in split_names:
                continue
            path = os.path.join(root, entry.get("filepath", folder), entry["filename"])
            with open(path, "rb") as f:
                encoded = f.read()
            yield entry["filename"], {
                "image": encoded, "image_id": entry["filename"],
                "captions": [s["raw"].strip() for s in entry["sentences"]],
            }


def open_retrieval_split(config: str, split: str, data_dir: str = "") -> Any:
    """The prepared split as a random-access source with images left encoded (decoded later,
    per batch, by the rows each process needs); a DataError with the prepare command if absent."""
    if config not in CONFIGS:
        raise DataError(f"retrieval set {config!r} is not registered; choose one of "
                        f"{', '.join(sorted(CONFIGS))}")
    if split not in SPLITS:
        raise DataError(f"retrieval set {config} has no split {split!r}; choose one of "
                        f"{', '.join(SPLITS)}")
    try:
        return tfds.data_source(f"karpathy_retrieval/{config}", split=split,
                                data_dir=data_dir or None, download=False,
                                decoders={"image": tfds.decode.SkipDecoding()})
    except Exception as e:  # tfds reports a missing dataset as several unrelated errors
        raise DataError(
            f"retrieval set {config} (split {split}) is not prepared in "
            f"{data_dir or 'the TFDS default data_dir'} ({type(e).__name__}); prepare it with: "
            f"python -m vlmjax.data.karpathy_retrieval --config {config} --manual_dir DIR"
            + (f" --data_dir {data_dir}" if data_dir else "")
            + f". {KarpathyRetrieval.MANUAL_DOWNLOAD_INSTRUCTIONS}") from e


def captions_of(source: Any, limit: int = 0) -> tuple[list[str], np.ndarray]:
    """Every caption of the first `limit` (0: all) images, and the image each belongs to."""
    n = min(len(source), limit) if limit else len(source)
    texts, owner = [], []
    for i in range(n):
        for caption in source[i]["captions"]:
            texts.append(caption.decode() if isinstance(caption, bytes) else str(caption))
            owner.append(i)
    return texts, np.asarray(owner, np.int64)


def prepare(config: str, manual_dir: str, data_dir: str = "") -> str:
    """Builds the array_record files of `config`; returns where they are."""
    return build_from_manual(KarpathyRetrieval(config=config, data_dir=data_dir or None,
                                               file_format="array_record"), manual_dir)


if __name__ == "__main__":
    prepare_cli(__doc__, "config", CONFIGS, prepare)
