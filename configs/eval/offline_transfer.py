"""Evaluation suite: transfer where it has something to add, offline (no download).

    python -m vlmjax.evaluate --workdir RUN --config configs/eval/offline_transfer.py[:OPTIONS]

Two settings for models pre-trained on Fashion-MNIST captions:
- `fashion_mnist`: its 10 classes after pre-training on coarse captions (data.name=
  fashion_mnist_coarse names only top / bottoms / dress / footwear / bag), so 8 of the 10 class
  names are new at transfer time; zero-shot on the 5 coarse groups (`fashion_mnist_coarse`) is
  reported too, as the pre-training task's own score;
- `digits`: scikit-learn's handwritten digits, a new domain with new classes (28x28 upsampled,
  1,201 train / 596 test images; needs scikit-learn).
Each gets zero-shot, the linear probe (all labels), few-shot (1..16 shots: linear probe, closed
form, Tip-Adapter, Tip-Adapter-F, CoOp), unsupervised transfer (UPL: linear head and CoOp) and
fine-tuning. CoOp learns 4 context vectors (the demos' text tower takes 16 tokens).

OPTIONS, comma-separated (default: both datasets, everything):
  fashion_mnist | digits   only that dataset (both when neither is given)
  study                    the shipped study's budget (configs/study/objectives_fashion_mnist.py):
                           no fine-tuning, few-shot at 1/4/16 shots x 2 seeds, the transfer
                           methods on the first 10,000 Fashion-MNIST train images
  token_wise               for FILIP (no single text embedding per class): only what needs no
                           text classifier (zero-shot scores token-wise; linear probe; few-shot
                           linear probe and closed form)
Evaluators are named `<kind>_<dataset>`; override any key, e.g.
--config.evals.fewshot_digits.seeds=1.
"""

import ml_collections

from vlmjax.errors import ConfigError

DATASETS = ("fashion_mnist", "digits")
FLAGS = ("study", "token_wise")
COOP = dict(coop_num_context=4)  # the demos' 16-token context leaves room for 4 vectors
FULL_SHOTS, STUDY_SHOTS = (1, 2, 4, 8, 16), (1, 4, 16)
# Fine-tuning for the demo-sized models: ~2 epochs of Fashion-MNIST, ~21 of digits, at lr 3e-3.
# The head starts as the zero-shot classifier, here a poor one with logit-scale-sized weights
# that AdamW at transfer_suite.py's 3e-4 barely moves: on the coarse CLIP, fine-tuned top-1 is
# 59.3 / 85.2 (Fashion-MNIST) and 42.3 / 93.6 (digits) at lr 3e-4 / 3e-3.
FINETUNE = {"fashion_mnist": dict(steps=500, lr=3e-3, warmup_steps=50),
            "digits": dict(steps=200, lr=3e-3, warmup_steps=20, train_batch_size=128)}


def parse(arg: str) -> tuple[list[str], set[str]]:
    """(datasets, flags) of the comma-separated OPTIONS; ConfigError naming a wrong one."""
    words = [w.strip() for w in arg.split(",") if w.strip()]
    unknown = [w for w in words if w not in DATASETS + FLAGS]
    if unknown:
        raise ConfigError(f"{__file__}: unknown option(s) {', '.join(unknown)}; choose "
                         f"from {', '.join(DATASETS + FLAGS)} (comma-separated)")
    chosen = [d for d in DATASETS if d in words] or list(DATASETS)
    return chosen, {w for w in words if w in FLAGS}


def evals_for(dataset: str, study: bool, token_wise: bool) -> dict[str, dict]:
    """The evaluators of one dataset: name -> options."""
    common = dict(dataset=dataset, batch_size=1000)
    # Fashion-MNIST's 60,000 train images cost more to embed than the fits take: the study
    # probes the first 10,000 (the 10,000 test images are all scored either way).
    limit = dict(num_images=10_000) if study and dataset == "fashion_mnist" else {}
    fewshot_methods = ("linear_probe", "closed_form") if token_wise else (
        "linear_probe", "closed_form", "tip_adapter", "tip_adapter_f", "coop")
    evals = {
        f"zeroshot_{dataset}": dict(kind="zeroshot", split="test", **common),
        f"linear_probe_{dataset}": dict(kind="linear_probe", **common, **limit),
        f"fewshot_{dataset}": dict(kind="fewshot", **common, **limit, methods=fewshot_methods,
                                   shots=STUDY_SHOTS if study else FULL_SHOTS,
                                   seeds=2 if study else 3, **COOP),
    }
    if dataset == "fashion_mnist":  # the pre-training task itself: the 5 coarse groups
        evals["zeroshot_fashion_mnist_coarse"] = dict(kind="zeroshot", split="test",
                                                      dataset="fashion_mnist_coarse", batch_size=1000)
    if not token_wise:  # both start from the zero-shot text classifier
        evals[f"unsupervised_{dataset}"] = dict(kind="unsupervised", **common, **limit, **COOP)
        if not study:
            evals[f"finetune_{dataset}"] = dict(kind="finetune", **common, **FINETUNE[dataset])
    return evals


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    datasets, flags = parse(arg)
    c = ml_collections.ConfigDict()
    c.evals = ml_collections.ConfigDict()
    for dataset in datasets:
        for name, options in evals_for(dataset, "study" in flags, "token_wise" in flags).items():
            c.evals[name] = ml_collections.ConfigDict(options)
    return c
