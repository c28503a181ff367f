"""Evaluation suite: zero-shot classification on the registered benchmarks (CoOp's datasets).

    python -m vlmjax.evaluate --workdir RUN --config configs/eval/zeroshot_suite.py:CLASSNAMES_JSON

An evaluation suite holds only `evals`: `vlmjax.evaluate` gives them to the run's own config.
ImageNet's TFDS labels are WordNet ids, so the argument is a CLIP_benchmark-format class-names
JSON (key "imagenet1k"); `:without_imagenet` leaves ImageNet out instead. FGVCAircraft and
UCF101 have no TFDS array_record source yet and are not in the registry. Datasets are read from
TFDS's data_dir (override: --config.evals.<name>.data_dir=...); each must be prepared first,
and validation prints the command that prepares a missing one.
"""

import ml_collections

# (benchmark, split): the split CoOp reports; EuroSAT's test is VTAB's last 20% of TFDS's train.
SUITE = (("imagenet", "test"), ("caltech101", "test"), ("oxford_pets", "test"),
         ("stanford_cars", "test"), ("flowers102", "test"), ("food101", "test"),
         ("sun397", "test"), ("dtd", "test"), ("eurosat", "test"))


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
