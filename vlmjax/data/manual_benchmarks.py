"""FGVC-Aircraft and UCF101 (middle frames), prepared as TFDS array_record files from manual downloads.

TFDS has no FGVC-Aircraft builder, and its UCF101 builder decodes videos with TensorFlow, so
these are small TFDS builders of our own (no TensorFlow). Each example is the encoded image, its
label and its file name (relative to the manual directory); class names are the registry's
(`benchmarks.json`), and the downloaded lists must agree with them.

    python -m vlmjax.data.manual_benchmarks --dataset fgvc_aircraft|ucf101 --manual_dir DIR [--data_dir D]

- fgvc_aircraft: DIR is `fgvc-aircraft-2013b/data` of the official archive (`images/<id>.jpg`,
  `variants.txt`, `images_variant_{train,val,test}.txt`). Labels are variants (100 classes,
  their order in variants.txt); the splits are the official train / val / test, which are CoOp's.
- ucf101: DIR holds `UCF-101-midframes/<Class_Name>/<video>.jpg`, one middle frame per video, as
  CoOp distributes it (CoOp's DATASETS.md), and CoOp's `split_zhou_UCF101.json` (train / val /
  test). Without that file, the official `ucfTrainTestlist/` (classInd.txt, trainlist01.txt,
  testlist01.txt) gives train and test. To extract the frames yourself into CoOp's layout
  (class folders with underscores between words, e.g. Apply_Eye_Makeup), per video:
  `ffmpeg -ss "$(ffprobe -v error -show_entries format=duration -of csv=p=0 V.avi | awk '{print
  $1/2}')" -i V.avi -frames:v 1 -q:v 2 OUT/Apply_Eye_Makeup/V.jpg`.
"""

import os

import tensorflow_datasets as tfds

from vlmjax.data.benchmarks import CLEANERS, get_benchmark
from vlmjax.data.coop_split_files import read_coop_split
from vlmjax.data.manual_download import build_from_manual, prepare_cli
from vlmjax.errors import DataError


def _lines(path: str) -> list[str]:
    if not os.path.isfile(path):
        raise DataError(f"{path} is missing; see `python -m vlmjax.data.manual_benchmarks --help` "
                        "for the manual directory's layout")
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def _check_names(found: list[str], benchmark: str, source: str) -> None:
    expected = get_benchmark(benchmark).classnames
    if found != expected:
        differ = [f"{a!r} vs {b!r}" for a, b in zip(found, expected, strict=False) if a != b][:3]
        raise DataError(f"{source} lists {len(found)} classes that are not the registry's "
                        f"{len(expected)} {benchmark} classes in order (e.g. {differ}); is it the "
                        "official file?")


class _ManualClassification(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Images with a label and their file name; subclasses list each split's (path, label)."""

    VERSION = tfds.core.Version("1.0.0")
    BENCHMARK = ""  # registry name: the source of the label names

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "label": tfds.features.ClassLabel(names=get_benchmark(self.BENCHMARK).classnames),
            "file_name": tfds.features.Text(),
        }))

    def split_items(self, root: str) -> dict[str, list[tuple[str, int]]]:
        """split -> [(image path relative to `root`, label)], from the manual directory's lists."""
        raise NotImplementedError

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        root = os.fspath(dl_manager.manual_dir)
        splits = self.split_items(root)
        missing = [p for items in splits.values() for p, _ in items
                   if not os.path.isfile(os.path.join(root, p))]
        if missing:
            raise DataError(f"{len(missing)} images listed for {self.BENCHMARK} are missing under "
                            f"{root}, e.g. {missing[:3]}")
        return {split: self._generate_examples(root, items) for split, items in splits.items()}

    def _generate_examples(self, root: str, items: list[tuple[str, int]]):
        for path, label in items:
            with open(os.path.join(root, path), "rb") as f:
                yield path, {"image": f.read(), "label": label, "file_name": path}


class FgvcAircraft(_ManualClassification):
    """FGVC-Aircraft 2013b: 100 variants, the official train / val / test splits (CoOp's)."""

    BENCHMARK = "fgvc_aircraft"
    MANUAL_DOWNLOAD_INSTRUCTIONS = ("Extract fgvc-aircraft-2013b.tar.gz (www.robots.ox.ac.uk/~vgg/"
                                    "data/fgvc-aircraft) and use its data/ folder as the manual dir.")

    def split_items(self, root: str) -> dict[str, list[tuple[str, int]]]:
        variants = _lines(os.path.join(root, "variants.txt"))
        _check_names(variants, self.BENCHMARK, os.path.join(root, "variants.txt"))
        label = {name: i for i, name in enumerate(variants)}
        out = {}
        for split in ("train", "val", "test"):
            path = os.path.join(root, f"images_variant_{split}.txt")
            items = []
            for line in _lines(path):
                image_id, _, variant = line.partition(" ")
                if variant not in label:
                    raise DataError(f"{path}: unknown variant {variant!r} (not in variants.txt)")
                items.append((f"images/{image_id}.jpg", label[variant]))
            out[split] = items
        return out


class Ucf101Midframes(_ManualClassification):
    """UCF101's middle video frames: 101 actions, CoOp's train / val / test (or the official
    split 1's train / test without CoOp's split file)."""

    BENCHMARK = "ucf101"
    FRAMES = "UCF-101-midframes"
    MANUAL_DOWNLOAD_INSTRUCTIONS = ("Put CoOp's UCF-101-midframes/ and split_zhou_UCF101.json "
                                    "(CoOp's DATASETS.md) in the manual dir, or ucfTrainTestlist/ "
                                    "instead of the split file.")

    def split_items(self, root: str) -> dict[str, list[tuple[str, int]]]:
        split_file = os.path.join(root, "split_zhou_UCF101.json")
        names = get_benchmark(self.BENCHMARK).classnames
        if os.path.isfile(split_file):
            out = {}
            for split, items in read_coop_split(split_file).items():
                for path, label, classname in items:
                    if not 0 <= label < len(names) or classname.replace("_", "") != names[label]:
                        raise DataError(f"{split_file}: {path} has label {label} named "
                                        f"{classname!r}, which is not UCF101's class {label}")
                out[split] = [(f"{self.FRAMES}/{path}", label) for path, label, _ in items]
            return out
        lists = os.path.join(root, "ucfTrainTestlist")
        classes = [line.split()[1] for line in _lines(os.path.join(lists, "classInd.txt"))]
        _check_names(classes, self.BENCHMARK, os.path.join(lists, "classInd.txt"))
        label = {name: i for i, name in enumerate(classes)}
        out = {}
        for split, list_file in (("train", "trainlist01.txt"), ("test", "testlist01.txt")):
            items = []
            for line in _lines(os.path.join(lists, list_file)):
                folder, video = line.split()[0].split("/")
                if folder not in label:
                    raise DataError(f"{list_file}: class {folder!r} of {video} is not in classInd.txt")
                underscored = CLEANERS["camel_case"](folder).replace(" ", "_")  # CoOp's folders
                items.append((f"{self.FRAMES}/{underscored}/{os.path.splitext(video)[0]}.jpg",
                              label[folder]))
            out[split] = items
        return out


BUILDERS = {"fgvc_aircraft": FgvcAircraft, "ucf101": Ucf101Midframes}


def prepare(dataset: str, manual_dir: str, data_dir: str = "") -> str:
    """Builds the array_record files of `dataset` from its manual directory; returns where they are."""
    return build_from_manual(BUILDERS[dataset](data_dir=data_dir or None,
                                               file_format="array_record"), manual_dir)


if __name__ == "__main__":
    prepare_cli(__doc__, "dataset", BUILDERS, prepare)
