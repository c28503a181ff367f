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
`flickr30k-images/`. Evaluators read the prepared sets as the benchmarks `coco` and `flickr30k`
(`assets/benchmarks.json`: their human captions, no labels) through `data.eval_sources`.
"""

import json
import os

import tensorflow_datasets as tfds

from vlmjax.data.manual_download import build_from_manual, prepare_cli

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


def prepare(config: str, manual_dir: str, data_dir: str = "") -> str:
    """Builds the array_record files of `config`; returns where they are."""
    return build_from_manual(KarpathyRetrieval(config=config, data_dir=data_dir or None,
                                               file_format="array_record"), manual_dir)


if __name__ == "__main__":
    prepare_cli(__doc__, "config", CONFIGS, prepare)
