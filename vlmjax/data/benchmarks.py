"""The zero-shot benchmark registry: datasets as data (assets/benchmarks.json), read through TFDS.

Each entry names its TFDS dataset, the splits (CoOp's where TFDS has them; `test` is what
zero-shot evaluates), where its class names come from (the TFDS label names cleaned by listed
rules, an inline list, or a file the user must give, e.g. ImageNet's WordNet ids), its prompt
templates (`{c}` placeholder; the single hand-crafted prompt per dataset of CoOp, whose
datasets these are: CLIP's larger ensembles come in through `templates_file`), its key in
CLIP_benchmark-format JSON files, and the command that prepares it. A dataset TFDS has no
builder for names the module of ours that registers one (`module`); a dataset with CoOp split
files says how their image paths match the TFDS examples (`coop`, read by `data.coop_splits`).
A dataset not in the registry is an error, never a fallback to another dataset's names or
templates.
"""

import dataclasses
import functools
import importlib
import json
import re
from importlib import resources
from typing import Any

from vlmjax.data.datasets import read_keyed_json
from vlmjax.errors import DataError


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """One registered zero-shot classification dataset."""

    name: str
    tfds: str  # TFDS name[/config]
    splits: dict[str, str]  # our split name (train / val / test) -> TFDS split
    templates: tuple[str, ...]
    classnames: Any  # "tfds", a list of names, or {"file_required": why}
    clean: tuple[str, ...]  # rules applied to TFDS label names (CLEANERS)
    prepare: str  # how to prepare it; {tfds} and {data_dir} are filled in
    clip_benchmark_key: str = ""  # its key in CLIP_benchmark's classnames / templates JSON
    label_source: str = "names"  # "wnid": TFDS labels are WordNet ids, not words
    module: str = ""  # our module that registers the TFDS builder (datasets TFDS lacks)
    coop: dict | None = None  # CoOp split file name and how its paths match TFDS examples


def _sun397_path(name: str) -> str:
    # "/b/bakery/shop" -> "bakery/shop" -> "bakery shop" (the category path without its letter)
    return re.sub(r"^/[a-z]/", "", name).replace("/", " ")


CLEANERS = {
    "underscores": lambda s: s.replace("_", " "),
    "lower": str.lower,
    "camel_case": lambda s: re.sub(r"(?<=[a-z])(?=[A-Z])", " ", s),
    "sun397_path": _sun397_path,
}


@functools.cache
def benchmarks() -> dict[str, Benchmark]:
    """Every registered benchmark by name."""
    raw = json.loads(resources.files("vlmjax.data").joinpath("assets", "benchmarks.json").read_text())
    out = {}
    for name, entry in raw.items():
        unknown = set(entry.get("clean", ())) - set(CLEANERS)
        if unknown:
            raise DataError(f"benchmark {name}: unknown clean rules {sorted(unknown)}")
        out[name] = Benchmark(name=name, tfds=entry["tfds"], splits=dict(entry["splits"]),
                              templates=tuple(entry["templates"]), classnames=entry["classnames"],
                              clean=tuple(entry.get("clean", ())), prepare=entry["prepare"],
                              clip_benchmark_key=entry.get("clip_benchmark_key", ""),
                              label_source=entry.get("label_source", "names"),
                              module=entry.get("module", ""), coop=entry.get("coop"))
    return out


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


def register_builder(benchmark: Benchmark) -> None:
    """Imports the module that registers the benchmark's TFDS builder, where it is one of ours."""
    if benchmark.module:
        importlib.import_module(benchmark.module)


def tfds_info(benchmark: Benchmark) -> Any:
    """The TFDS dataset's metadata (shipped with tensorflow-datasets or defined by our builder:
    no download, no TensorFlow)."""
    import tensorflow_datasets as tfds

    register_builder(benchmark)
    return tfds.builder(benchmark.tfds, try_gcs=False).info


def tfds_label_names(benchmark: Benchmark) -> list[str]:
    """Label names from the TFDS dataset's metadata."""
    return list(tfds_info(benchmark).features["label"].names)


def num_classes(benchmark: Benchmark) -> int:
    """The number of labels of the benchmark's TFDS dataset."""
    return tfds_info(benchmark).features["label"].num_classes


def benchmark_prompts(name: str, classnames_file: str = "", templates_file: str = "",
                      split_file: str = "") -> tuple[list[str], list[str]]:
    """Class names (in label order) and templates of a benchmark, user files taking precedence;
    with a CoOp `split_file`, labels are CoOp's and so are the default names."""
    benchmark = get_benchmark(name)
    keys = (name, benchmark.clip_benchmark_key)
    source = benchmark.classnames
    if split_file:
        from vlmjax.data.coop_splits import coop_classnames
        coop_names = coop_classnames(benchmark, split_file)
        expected, space = len(coop_names), f"CoOp split file ({split_file}) has"
    else:
        expected, space = num_classes(benchmark), f"TFDS labels ({benchmark.tfds}) have"
    if classnames_file:
        classnames = read_keyed_json(classnames_file, keys, "classnames")
    elif split_file:
        classnames = coop_names
    elif isinstance(source, dict):
        raise DataError(f"benchmark {name} needs evals.<name>.classnames_file: "
                        f"{source['file_required']}")
    elif source == "tfds":
        classnames = [clean_name(n, benchmark.clean) for n in tfds_label_names(benchmark)]
    else:
        classnames = [clean_name(n, benchmark.clean) for n in source]
    if len(classnames) != expected:
        raise DataError(f"{len(classnames)} class names for {name}, whose {space} "
                        f"{expected} classes" + (f" (from {classnames_file})" if classnames_file else ""))
    templates = (read_keyed_json(templates_file, keys, "templates") if templates_file
                 else list(benchmark.templates))
    if not templates or any("{c}" not in t for t in templates):
        raise DataError(f"every template for {name} must contain the placeholder {{c}}")
    return classnames, templates
