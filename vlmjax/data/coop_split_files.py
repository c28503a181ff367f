"""CoOp's split files: `split_zhou_<Name>.json` = {"train"|"val"|"test": [[image path, label,
class name], ...]} (links in CoOp's DATASETS.md), read and checked; CoOp's class names.

Only the files: matching their images to prepared TFDS examples is `data.coop_splits`.
"""

import json
import os

from vlmjax.data.benchmarks import Benchmark, benchmarks
from vlmjax.errors import DataError

COOP_SPLITS = ("train", "val", "test")
Item = tuple[str, int, str]  # CoOp's image path, label, class name


def read_coop_split(path: str) -> dict[str, list[Item]]:
    """The items of a CoOp split file by split, checked to be [path, label, class name] lists."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read CoOp split file {path}: {e}") from e
    if not isinstance(data, dict) or not data or set(data) - set(COOP_SPLITS):
        raise DataError(f"{path} is not a CoOp split file: expected an object with keys among "
                        f"{', '.join(COOP_SPLITS)}")
    out = {}
    for split, items in data.items():
        for item in items:
            if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)
                    and isinstance(item[1], int) and isinstance(item[2], str)):
                raise DataError(f"{path}: {split} item {item!r} is not [image path, label, class name]")
        out[split] = [tuple(item) for item in items]
    return out


def coop_rule(benchmark: Benchmark) -> dict:
    """The registry's CoOp entry of a benchmark, or a DataError naming those that have one."""
    if not benchmark.coop:
        raise DataError(f"benchmark {benchmark.name} has no CoOp split definition (`coop` in "
                        "vlmjax/data/assets/benchmarks.json); split_file works for "
                        f"{', '.join(sorted(n for n, b in benchmarks().items() if b.coop))}")
    return benchmark.coop


def coop_split_path(benchmark: Benchmark, split_file: str) -> str:
    """The split file itself, or the registry's CoOp file name inside it if it is a folder."""
    name = coop_rule(benchmark)["split_file"]
    path = os.path.join(split_file, name) if os.path.isdir(split_file) else split_file
    if not os.path.isfile(path):
        raise DataError(f"CoOp split file {path} does not exist; download {name} (CoOp's "
                        "DATASETS.md, github.com/KaiyangZhou/CoOp) and point "
                        "evals.<name>.split_file at it or at its folder")
    return path


def coop_classnames(benchmark: Benchmark, split_file: str) -> list[str]:
    """CoOp's class names in its label order, checked: one name per label, labels 0..C-1."""
    path = coop_split_path(benchmark, split_file)
    names: dict[int, str] = {}
    for items in read_coop_split(path).values():
        for image, label, classname in items:
            if names.setdefault(label, classname) != classname:
                raise DataError(f"{path}: label {label} is named both {names[label]!r} and "
                                f"{classname!r} ({image})")
    if sorted(names) != list(range(len(names))):
        raise DataError(f"{path}: labels are not 0..{len(names) - 1} (missing "
                        f"{sorted(set(range(max(names) + 1)) - set(names))[:5]})")
    return [names[i].replace("_", " ") for i in range(len(names))]
