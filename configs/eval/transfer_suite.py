"""Evaluation suite: transfer of a checkpoint to one dataset, every setup of the survey's tables.

    python -m vlmjax.evaluate --workdir RUN --config configs/eval/transfer_suite.py[:DATASET]

Zero-shot, linear probe, few-shot (1/2/4/8/16 shots x 3 seeds: linear probe, closed form,
Tip-Adapter, Tip-Adapter-F, CoOp), fine-tuning and unsupervised transfer (UPL pseudo-labels:
linear head and CoOp). DATASET defaults to fashion_mnist (the demo's on-disk data); a
registered benchmark works the same (prepare it first; ImageNet needs classnames_file). The
image features are extracted once per checkpoint and split and cached in RUN/cache/features.
Override any setting, e.g. --config.evals.fewshot.seeds=1 or
--config.evals.finetune.steps=2000; CoOp uses 16 context vectors where the text tower's
context allows it, and fewer (4, the length of "a photo of a") for the demo's 16-token context.
"""

import ml_collections


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    dataset = arg or "fashion_mnist"
    demo = dataset == "fashion_mnist"
    c = ml_collections.ConfigDict()
    c.evals = ml_collections.ConfigDict()
    common = dict(dataset=dataset, batch_size=1000)
    coop = dict(coop_num_context=4 if demo else 16)
    c.evals.zeroshot = dict(kind="zeroshot", split="test", **common)
    c.evals.linear_probe = dict(kind="linear_probe", **common)
    c.evals.fewshot = dict(kind="fewshot", **common, **coop)
    c.evals.finetune = dict(kind="finetune", **common,
                            **(dict(steps=500, lr=3e-4, warmup_steps=50) if demo else {}))
    c.evals.unsupervised = dict(kind="unsupervised", **common, **coop)
    return c
