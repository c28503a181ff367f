"""Evaluation suite: zero-shot classification on the registered benchmarks (CoOp's datasets).

    python -m vlmjax.evaluate --workdir RUN --config configs/eval/zeroshot_suite.py:CLASSNAMES_JSON

An evaluation suite holds only `evals`: `vlmjax.evaluate` gives them to the run's own config.
ImageNet's TFDS labels are WordNet ids, so the argument is a CLIP_benchmark-format class-names
JSON (key "imagenet1k"); `:without_imagenet` leaves ImageNet out instead. Datasets are read
from TFDS's data_dir (override: --config.evals.<name>.data_dir=...); each must be prepared
first, and validation prints the command that prepares a missing one (FGVCAircraft and UCF101:
`python -m vlmjax.data.manual_benchmarks`, from their downloads). EuroSAT's test split is VTAB's
last 20% of TFDS's train. CoOp's own splits: --config.evals.<name>.split_file=FOLDER of CoOp's
split_zhou_*.json files (not Food101, whose TFDS examples have no file names).
"""

import ml_collections

# (benchmark, split): CoOp's 11 datasets on their test splits.
SUITE = (("imagenet", "test"), ("caltech101", "test"), ("oxford_pets", "test"),
         ("stanford_cars", "test"), ("flowers102", "test"), ("food101", "test"),
         ("fgvc_aircraft", "test"), ("sun397", "test"), ("dtd", "test"), ("eurosat", "test"),
         ("ucf101", "test"))


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.evals = ml_collections.ConfigDict()
    for name, split in SUITE:
        if name == "imagenet" and arg == "without_imagenet":
            continue
        c.evals[name] = ml_collections.ConfigDict(dict(
            kind="zeroshot", dataset=name, split=split, batch_size=256,
            classnames_file=arg if name == "imagenet" else ""))
    return c
