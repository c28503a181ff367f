"""CoOp's fixed train / val / test splits over prepared TFDS datasets, for comparable few-shot numbers.

CoOp publishes `split_zhou_<Name>.json` (read by `data.coop_split_files`). With
`evals.<name>.split_file` pointing at one (or at its folder), a split's rows are the file's items
in order, with CoOp's labels and class names (underscores read as spaces, as CoOp prompts them);
CoOp's label space may differ from TFDS's (Caltech101: 100 classes, without BACKGROUND_Google
and Faces_easy). Images come from the TFDS dataset, found by file name: the registry's `coop`
entry names the TFDS feature holding it and two key templates, `tfds_key` over {path, dir, base,
stem} of that name, {label} (TFDS label name) and {split} (TFDS split), and `coop_key` over
{path, dir, base, stem} of CoOp's path; the keys are compared lower-cased. The file-name index
is built once per (dataset, data_dir) and process, reading every record of the dataset's TFDS
splits with images left encoded.
"""

import functools
import posixpath
from collections.abc import Mapping
from typing import Any

from vlmjax.data.benchmarks import Benchmark, get_benchmark
from vlmjax.data.coop_split_files import coop_rule, coop_split_path, read_coop_split
from vlmjax.data.tfds_images import READ_CHUNK, open_tfds, read_examples, tfds_label_names
from vlmjax.errors import DataError


def _key(template: str, path: str, **fields: str) -> str:
    directory, base = posixpath.split(path)
    return template.format(path=path, dir=directory, base=base, stem=posixpath.splitext(base)[0],
                           **fields).lower()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def index_sources(sources: Mapping[str, Any], label_names: list[str], rule: Mapping
                  ) -> dict[str, tuple[str, int]]:
    """key -> (TFDS split, row) over random-access sources by TFDS split; duplicate keys are a
    DataError (the match would be ambiguous)."""
    index: dict[str, tuple[str, int]] = {}
    for split, source in sources.items():
        for start in range(0, len(source), READ_CHUNK):
            rows = range(start, min(start + READ_CHUNK, len(source)))
            for row, example in zip(rows, read_examples(source, rows), strict=True):
                key = _key(rule["tfds_key"], _text(example[rule["file_feature"]]), split=split,
                           label=label_names[int(example["label"])])
                if key in index:
                    raise DataError(f"two examples of {split} and {index[key][0]} match the CoOp "
                                    f"key {key!r}; the registry's tfds_key must identify an image")
                index[key] = (split, row)
    return index


def tfds_sources(benchmark: Benchmark, data_dir: str) -> dict[str, Any]:
    """Every TFDS split the benchmark's splits draw from (slices read whole), images encoded."""
    splits = sorted({split.split("[")[0] for split in benchmark.splits.values()})
    return {split: open_tfds(benchmark, split, data_dir, skip_decoding=True) for split in splits}


@functools.cache
def _opened(name: str, data_dir: str) -> tuple[dict[str, Any], dict[str, tuple[str, int]]]:
    benchmark = get_benchmark(name)
    rule = coop_rule(benchmark)
    if "unmatchable" in rule:
        raise DataError(f"CoOp's split of {name} cannot be used: {rule['unmatchable']}")
    sources = tfds_sources(benchmark, data_dir)
    return sources, index_sources(sources, tfds_label_names(benchmark), rule)


class CoopSplitSource:
    """A CoOp split as a random-access source: `source[i]` = {"image": encoded, "label": CoOp's}."""

    def __init__(self, name: str, split: str, data_dir: str, split_file: str):
        benchmark = get_benchmark(name)
        path = coop_split_path(benchmark, split_file)
        items = read_coop_split(path)
        if split not in items:
            raise DataError(f"CoOp split file {path} has no split {split!r}; choose one of "
                            f"{', '.join(items)}")
        self.sources, index = _opened(name, data_dir)
        template = coop_rule(benchmark)["coop_key"]
        keys = [_key(template, image) for image, _, _ in items[split]]
        unmatched = [image for (image, _, _), key in zip(items[split], keys, strict=True)
                     if key not in index]
        if unmatched:
            raise DataError(f"{len(unmatched)} of {len(keys)} images of CoOp's {split} split "
                            f"({path}) are not in {benchmark.tfds} in "
                            f"{data_dir or 'the TFDS default data_dir'}, e.g. {unmatched[:3]}")
        self.rows = [(*index[key], label) for key, (_, label, _) in zip(keys, items[split], strict=True)]

    def __len__(self) -> int:
        return len(self.rows)

    def labels(self) -> list[int]:
        """CoOp's label of every row, without reading the TFDS examples."""
        return [label for _, _, label in self.rows]

    def __getitem__(self, i: int) -> dict[str, Any]:
        split, row, label = self.rows[i]
        return {"image": self.sources[split][row]["image"], "label": label}
