"""TFDS builders of the dense benchmarks from their official manual downloads (no TensorFlow).

    python -m vlmjax.data.dense_builders --dataset NAME --manual_dir DIR [--data_dir D]

Every example holds the encoded image, its file name and either a PNG mask whose values are
already indices into the registry's class list (255: ignored; `data/assets/dense_benchmarks.json`)
or its objects (absolute [x0, y0, x1, y1] boxes, class labels, COCO's crowd flag):
- voc2012_segmentation: DIR = VOCdevkit/VOC2012 (JPEGImages/, SegmentationClass/*.png with
  palette indices 0..20 and 255 on object boundaries, ImageSets/Segmentation/{train,val}.txt);
- pascal_context59: DIR = VOCdevkit/VOC2010 with SegmentationClassContext/*.png (0 background,
  1..59 the classes: mmsegmentation's conversion of the Detail API's trainval_merged.json) and
  ImageSets/SegmentationContext/{train,val}.txt; background becomes 255 (Context-59 ignores it);
- ade20k_150: DIR = ADEChallengeData2016 (images/{training,validation}/*.jpg,
  annotations/{training,validation}/*.png with 0 "other" -> 255, k -> k - 1);
- coco_stuff171: DIR holds val2017/*.jpg (and train2017/) and stuffthingmaps_trainval2017/
  {val2017,train2017}/*.png (0-based COCO ids 0..181, 255 unlabelled): the 171 ids with
  annotations map to 0..170, the 11 unused thing ids to 255;
- coco_boxes: DIR holds annotations/instances_val2017.json and val2017/*.jpg (the 80 classes in
  category-id order, which must be the registry's);
- lvis_boxes: DIR holds lvis_v1_val.json and the COCO 2017 images it names (val2017/,
  train2017/); its 1203 category names (in id order) become the label names. For LVIS's
  federated evaluation every example also holds `neg_labels` and `not_exhaustive_labels` (the
  image's neg_category_ids and not_exhaustive_category_ids as label indices), and the dataset's
  metadata `frequency` each label's "r" / "c" / "f". An older annotation file without them
  still builds, with a warning: missing lists are empty (each class is then evaluated on its
  positive images only) and a missing frequency is "" (APr / APc / APf come out NaN).
"""

import io
import json
import logging
import os
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from vlmjax.data.dense_benchmarks import IGNORE, dense_benchmark
from vlmjax.data.manual_download import build_from_manual, prepare_cli
from vlmjax.errors import DataError

log = logging.getLogger(__name__)

def _lines(path: str) -> list[str]:
    if not os.path.isfile(path):
        raise DataError(f"{path} is missing; see `python -m vlmjax.data.dense_builders --help` "
                        "for the manual directory's layout")
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def _png(mask: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _read(path: str) -> bytes:
    if not os.path.isfile(path):
        raise DataError(f"{path} is missing (listed in the manual directory's split files)")
    with open(path, "rb") as f:
        return f.read()


def reduce_zero_label(mask: np.ndarray) -> np.ndarray:
    """0 (background / "other") -> IGNORE, k -> k - 1 (mmseg's reduce_zero_label)."""
    mask = mask.astype(np.int64)
    return np.where(mask == 0, IGNORE, mask - 1).astype(np.uint8)


class _MaskBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Images with a class-index mask; subclasses list each split's (image, mask) files."""

    VERSION = tfds.core.Version("1.0.0")
    BENCHMARK = ""

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "mask": tfds.features.Image(shape=(None, None, 1)),
            "file_name": tfds.features.Text(),
        }))

    def split_files(self, root: str) -> dict[str, list[tuple[str, str]]]:
        """split -> [(image path, mask path)] relative to `root`."""
        raise NotImplementedError

    def convert(self, mask: np.ndarray) -> np.ndarray:
        """The stored mask's values -> indices of the registry's classes (255 ignored)."""
        return mask

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        root = os.fspath(dl_manager.manual_dir)
        return {split: self._generate_examples(root, items)
                for split, items in self.split_files(root).items()}

    def _generate_examples(self, root: str, items: list[tuple[str, str]]) -> Iterator:
        classes = len(dense_benchmark(self.BENCHMARK)["classnames"])
        for image_path, mask_path in items:
            image = _read(os.path.join(root, image_path))
            with Image.open(io.BytesIO(image)) as pil:
                size = pil.size
            with Image.open(os.path.join(root, mask_path)) as pil:
                if pil.size != size:
                    raise DataError(f"{mask_path} is {pil.size[0]}x{pil.size[1]} but its image "
                                    f"{image_path} is {size[0]}x{size[1]}")
                mask = self.convert(np.asarray(pil))
            bad = np.setdiff1d(np.unique(mask), [*range(classes), IGNORE])
            if bad.size:
                raise DataError(f"{mask_path} holds class id {int(bad[0])} outside the "
                                f"{classes} classes of {self.BENCHMARK}")
            yield image_path, {"image": image, "mask": _png(mask),
                               "file_name": image_path}


def _listed(root: str, list_file: str, image_dir: str, mask_dir: str, mask_ext: str = ".png"
            ) -> list[tuple[str, str]]:
    return [(f"{image_dir}/{i}.jpg", f"{mask_dir}/{i}{mask_ext}")
            for i in _lines(os.path.join(root, list_file))]


class Voc2012Segmentation(_MaskBuilder):
    """PASCAL VOC 2012 segmentation: 20 classes and background, 255 on boundaries."""

    BENCHMARK = "voc2012_segmentation"
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Extract VOCtrainval_11-May-2012.tar; use VOCdevkit/VOC2012."

    def split_files(self, root: str) -> dict[str, list[tuple[str, str]]]:
        return {split: _listed(root, f"ImageSets/Segmentation/{split}.txt", "JPEGImages",
                               "SegmentationClass") for split in ("train", "val")}


class PascalContext59(_MaskBuilder):
    """PASCAL Context's 59 most frequent classes (background ignored)."""

    BENCHMARK = "pascal_context59"
    MANUAL_DOWNLOAD_INSTRUCTIONS = "VOCdevkit/VOC2010 with SegmentationClassContext/ (module doc)."

    def split_files(self, root: str) -> dict[str, list[tuple[str, str]]]:
        return {split: _listed(root, f"ImageSets/SegmentationContext/{split}.txt", "JPEGImages",
                               "SegmentationClassContext") for split in ("train", "val")}

    def convert(self, mask: np.ndarray) -> np.ndarray:
        return reduce_zero_label(mask)


class Ade20k150(_MaskBuilder):
    """ADE20K SceneParsing: 150 classes, 0 ("other") ignored."""

    BENCHMARK = "ade20k_150"
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Extract ADEChallengeData2016.zip; use ADEChallengeData2016/."

    def split_files(self, root: str) -> dict[str, list[tuple[str, str]]]:
        out = {}
        for split in ("training", "validation"):
            folder = os.path.join(root, "images", split)
            if not os.path.isdir(folder):
                raise DataError(f"{folder} is missing: is {root} ADEChallengeData2016?")
            names = sorted(os.path.splitext(f)[0] for f in os.listdir(folder) if f.endswith(".jpg"))
            out[split] = [(f"images/{split}/{n}.jpg", f"annotations/{split}/{n}.png")
                          for n in names]
        return out

    def convert(self, mask: np.ndarray) -> np.ndarray:
        return reduce_zero_label(mask)


class CocoStuff171(_MaskBuilder):
    """COCO-Stuff 164k: 80 thing and 91 stuff classes with annotations."""

    BENCHMARK = "coco_stuff171"
    MANUAL_DOWNLOAD_INSTRUCTIONS = "val2017/ and stuffthingmaps_trainval2017/ in one folder."

    def split_files(self, root: str) -> dict[str, list[tuple[str, str]]]:
        out = {}
        for split in ("val", "train"):
            folder = os.path.join(root, f"{split}2017")
            if not os.path.isdir(folder):
                if split == "val":
                    raise DataError(f"{folder} is missing (module doc: the manual layout)")
                continue
            names = sorted(os.path.splitext(f)[0] for f in os.listdir(folder) if f.endswith(".jpg"))
            out[split] = [(f"{split}2017/{n}.jpg", f"stuffthingmaps_trainval2017/{split}2017/{n}.png")
                          for n in names]
        return out

    def convert(self, mask: np.ndarray) -> np.ndarray:
        table = np.full(256, IGNORE, np.uint8)
        table[dense_benchmark(self.BENCHMARK)["stuffthingmaps_ids"]] = np.arange(171)
        return table[mask]


class _BoxBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Images with their objects' boxes from a COCO-format annotation file."""

    VERSION = tfds.core.Version("1.0.0")
    BENCHMARK = ""
    ANNOTATIONS = ""  # relative to the manual directory
    manual_root = ""  # set by `prepare`: the label names are the annotation file's categories

    def class_names(self, categories: list[dict]) -> list[str]:
        return [c["name"] for c in categories]

    def _annotations(self, root: str) -> dict:
        """The annotation file, read once per builder (LVIS's is 200 MB)."""
        path = os.path.join(root, self.ANNOTATIONS)
        if getattr(self, "_loaded", (None,))[0] != path:
            if not os.path.isfile(path):
                raise DataError(f"{path} is missing (module doc of vlmjax.data.dense_builders)")
            with open(path) as f:
                self._loaded = (path, json.load(f))
        return self._loaded[1]

    def _info(self) -> tfds.core.DatasetInfo:
        if not self.manual_root:
            raise DataError(f"{self.BENCHMARK} is built through vlmjax.data.dense_builders.prepare")
        categories = sorted(self._annotations(self.manual_root)["categories"],
                            key=lambda c: c["id"])
        names = self.class_names(categories)
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "file_name": tfds.features.Text(),
            "objects": tfds.features.Sequence({
                "bbox": tfds.features.Tensor(shape=(4,), dtype=np.float32),
                "label": tfds.features.ClassLabel(names=names),
                "is_crowd": tfds.features.Tensor(shape=(), dtype=np.bool_),
            }),
            **self.image_features(),
        }), metadata=self.metadata(categories))

    def image_features(self) -> dict:
        """Features of an example beyond its image and objects (none for COCO)."""
        return {}

    def image_fields(self, image: dict, order: dict[int, int]) -> dict:
        """Values of `image_features` for an annotation file's image entry."""
        return {}

    def metadata(self, categories: list[dict]) -> tfds.core.MetadataDict | None:
        """Dataset-level metadata from the categories in id order (none for COCO)."""
        return None

    def image_path(self, root: str, image: dict) -> str:
        return f"val2017/{image['file_name']}"

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        return {"val": self._generate_examples(os.fspath(dl_manager.manual_dir))}

    def _generate_examples(self, root: str) -> Iterator:
        data = self._annotations(root)
        order = {c["id"]: i for i, c in enumerate(sorted(data["categories"], key=lambda c: c["id"]))}
        objects: dict[int, list[dict]] = {}
        for a in data["annotations"]:
            objects.setdefault(a["image_id"], []).append(a)
        for image in sorted(data["images"], key=lambda i: i["id"]):
            path = self.image_path(root, image)
            boxes = objects.get(image["id"], [])
            yield str(image["id"]), {
                "image": _read(os.path.join(root, path)), "file_name": path,
                "objects": {
                    "bbox": np.asarray([[x, y, x + w, y + h] for x, y, w, h in
                                        (a["bbox"] for a in boxes)], np.float32).reshape(-1, 4),
                    "label": [order[a["category_id"]] for a in boxes],
                    "is_crowd": np.asarray([bool(a.get("iscrowd", 0)) for a in boxes], bool)},
                **self.image_fields(image, order)}


class CocoBoxes(_BoxBuilder):
    """COCO 2017 val boxes of the 80 detection classes."""

    BENCHMARK = "coco_boxes"
    ANNOTATIONS = "annotations/instances_val2017.json"
    MANUAL_DOWNLOAD_INSTRUCTIONS = "annotations/instances_val2017.json and val2017/ in one folder."

    def class_names(self, categories: list[dict]) -> list[str]:
        names = [c["name"] for c in categories]
        if names != dense_benchmark(self.BENCHMARK)["classnames"]:
            raise DataError(f"{self.ANNOTATIONS} lists {len(names)} categories that are not the "
                            "registry's 80 COCO classes in id order; is it the official file?")
        return names


class LvisBoxes(_BoxBuilder):
    """LVIS v1 val boxes of its 1203 categories (images from COCO 2017)."""

    BENCHMARK = "lvis_boxes"
    ANNOTATIONS = "lvis_v1_val.json"
    MANUAL_DOWNLOAD_INSTRUCTIONS = "lvis_v1_val.json with val2017/ and train2017/ in one folder."
    # 1.1.0: the federated fields (neg / not-exhaustive lists, class frequencies); a folder
    # prepared as 1.0.0 is never read for federated AP (the registry names 1.1.0).
    VERSION = tfds.core.Version("1.1.0")
    FEDERATED = ("neg_category_ids", "not_exhaustive_category_ids")
    FEATURES = ("neg_labels", "not_exhaustive_labels")

    def image_features(self) -> dict:
        return {name: tfds.features.Tensor(shape=(None,), dtype=np.int32)
                for name in self.FEATURES}

    def image_fields(self, image: dict, order: dict[int, int]) -> dict:
        out = {}
        for key, name in zip(self.FEDERATED, self.FEATURES, strict=True):
            ids = image.get(key, [])
            unknown = [i for i in ids if i not in order]
            if unknown:
                raise DataError(f"{self.ANNOTATIONS}: image {image['id']} lists {key} "
                                f"{unknown[:3]}, which are not categories of the file")
            out[name] = np.asarray(sorted(order[i] for i in ids), np.int32)
        return out

    def metadata(self, categories: list[dict]) -> tfds.core.MetadataDict:
        frequency = [c.get("frequency", "") for c in categories]
        bad = sorted({f for f in frequency if f not in ("r", "c", "f", "")})
        if bad:
            raise DataError(f"{self.ANNOTATIONS}: category frequencies {bad} are not r / c / f")
        if not all(frequency):
            log.warning("%s: %d of %d categories have no frequency; their APr / APc / APf "
                        "groups are unknown", self.ANNOTATIONS, frequency.count(""),
                        len(frequency))
        return tfds.core.MetadataDict(frequency=frequency)

    def _generate_examples(self, root: str) -> Iterator:
        images = self._annotations(root)["images"]
        for key in self.FEDERATED:
            if not any(key in image for image in images):
                log.warning("%s has no %s (an older LVIS version?): taken as empty, so the "
                            "federated AP is not LVIS v1's", self.ANNOTATIONS, key)
        yield from super()._generate_examples(root)

    def image_path(self, root: str, image: dict) -> str:
        name = image.get("file_name") or image["coco_url"].rsplit("/", 1)[-1]
        name = os.path.basename(name)
        for folder in ("val2017", "train2017"):
            if os.path.isfile(os.path.join(root, folder, name)):
                return f"{folder}/{name}"
        raise DataError(f"LVIS image {name} is in neither {root}/val2017 nor {root}/train2017")


BUILDERS: dict[str, type] = {
    "voc2012_segmentation": Voc2012Segmentation, "pascal_context59": PascalContext59,
    "ade20k_150": Ade20k150, "coco_stuff171": CocoStuff171, "coco_boxes": CocoBoxes,
    "lvis_boxes": LvisBoxes}


def prepare(dataset: str, manual_dir: str, data_dir: str = "") -> str:
    """Builds the array_record files of `dataset` from `manual_dir`; returns where they are."""
    builder_class = BUILDERS[dataset]
    if issubclass(builder_class, _BoxBuilder):  # label names come from the annotation file
        builder_class.manual_root = manual_dir
    builder = builder_class(data_dir=data_dir or None, file_format="array_record")
    return build_from_manual(builder, manual_dir)


if __name__ == "__main__":
    prepare_cli(__doc__, "dataset", BUILDERS, prepare)
