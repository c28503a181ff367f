"""The evaluation benchmark registry: datasets as data (assets/benchmarks.json), read through TFDS.

Each entry names its TFDS dataset, the splits (CoOp's where TFDS has them; `test` is what
evaluators read by default), what its examples carry, and the command that prepares it:
- labelled sets: where the class names come from (the TFDS label names cleaned by listed rules,
  an inline list, or a file the user must give, e.g. ImageNet's WordNet ids), the prompt
  templates (`{c}` placeholder; the single hand-crafted prompt per dataset of CoOp, whose
  datasets these are: CLIP's larger ensembles come in through `templates_file`), the key in
  CLIP_benchmark-format JSON files, and, with CoOp split files, how their image paths match
  the TFDS examples (`coop`, read by `data.coop_splits`);
- captioned sets (COCO, Flickr30k in Karpathy's splits): `"classnames": null` and the TFDS
  feature holding every human caption of an image (`captions`).
A dataset TFDS has no builder for names the module of ours that defines one (`builder`, one of
OUR_BUILDERS). This module is the table alone: reading the data is `data.tfds_images`. A
dataset not in the registry is an error, never a fallback to another dataset's names.
"""

import dataclasses
import functools
import json
import re
from importlib import resources
from typing import Any

from vlmjax.errors import DataError

# Modules of vlmjax.data that define TFDS builders (`builder` of an entry; data.tfds_images
# imports them when such a benchmark is opened).
OUR_BUILDERS = ("karpathy_retrieval", "manual_benchmarks")


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """One registered evaluation dataset."""

    name: str
    tfds: str  # TFDS name[/config]
    splits: dict[str, str]  # our split name (train / val / test) -> TFDS split
    templates: tuple[str, ...]
    classnames: Any  # "tfds", a list of names, {"file_required": why}, or None (no labels)
    clean: tuple[str, ...]  # rules applied to TFDS label names (CLEANERS)
    prepare: str  # how to prepare it; {tfds} and {data_dir} are filled in
    clip_benchmark_key: str = ""  # its key in CLIP_benchmark's classnames / templates JSON
    label_source: str = "names"  # "wnid": TFDS labels are WordNet ids, not words
    builder: str = ""  # our module that defines the TFDS builder (datasets TFDS lacks)
    coop: dict | None = None  # CoOp split file name and how its paths match TFDS examples
    captions: str = ""  # the TFDS feature holding each image's human captions

    @property
    def labelled(self) -> bool:
        """Whether its examples carry a class label."""
        return self.classnames is not None


def _sun397_path(name: str) -> str:
    # "/b/bakery/shop" -> "bakery/shop" -> "bakery shop" (the category path without its letter)
    return re.sub(r"^/[a-z]/", "", name).replace("/", " ")


CLEANERS = {
    "underscores": lambda s: s.replace("_", " "),
    "lower": str.lower,
    "camel_case": lambda s: re.sub(r"(?<=[a-z])(?=[A-Z])", " ", s),
    "sun397_path": _sun397_path,
}


def _entry(name: str, entry: dict) -> Benchmark:
    unknown = set(entry.get("clean", ())) - set(CLEANERS)
    if unknown:
        raise DataError(f"benchmark {name}: unknown clean rules {sorted(unknown)}")
    if entry.get("builder", "") not in ("", *OUR_BUILDERS):
        raise DataError(f"benchmark {name}: builder {entry['builder']!r} is not one of "
                        f"{', '.join(OUR_BUILDERS)}")
    if entry["classnames"] is None and not entry.get("captions"):
        raise DataError(f"benchmark {name} has neither class names nor captions")
    return Benchmark(name=name, tfds=entry["tfds"], splits=dict(entry["splits"]),
                     templates=tuple(entry["templates"]), classnames=entry["classnames"],
                     clean=tuple(entry.get("clean", ())), prepare=entry["prepare"],
                     clip_benchmark_key=entry.get("clip_benchmark_key", ""),
                     label_source=entry.get("label_source", "names"),
                     builder=entry.get("builder", ""), coop=entry.get("coop"),
                     captions=entry.get("captions", ""))


@functools.cache
def benchmarks() -> dict[str, Benchmark]:
    """Every registered benchmark by name."""
    raw = json.loads(resources.files("vlmjax.data").joinpath("assets", "benchmarks.json").read_text())
    return {name: _entry(name, entry) for name, entry in raw.items()}


def get_benchmark(name: str) -> Benchmark:
    """The registry entry for `name`, or a DataError listing the registered ones."""
    if name not in benchmarks():
        raise DataError(f"benchmark {name!r} is not registered; choose one of "
                        f"{', '.join(sorted(benchmarks()))} (or add it to "
                        "vlmjax/data/assets/benchmarks.json)")
    return benchmarks()[name]


def tfds_split(benchmark: Benchmark, split: str) -> str:
    """The TFDS split behind our split name, or a DataError naming the available ones."""
    if split not in benchmark.splits:
        raise DataError(f"benchmark {benchmark.name} has no split {split!r}; choose one of "
                        f"{', '.join(benchmark.splits)}")
    return benchmark.splits[split]


def clean_name(name: str, rules: tuple[str, ...]) -> str:
    """A TFDS label name after the benchmark's cleaning rules, whitespace collapsed."""
    for rule in rules:
        name = CLEANERS[rule](name)
    return " ".join(name.split())
