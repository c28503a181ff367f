"""Evaluation suite: the same evaluators for every demo run, whatever its objective.

    python -m vlmjax.evaluate --workdir workdir/demo_clip --config configs/eval/fashion_mnist_suite.py

Zero-shot classification of the 10,000 test images and class-relevance retrieval over 1,000
test images with 5 captions each, scored as the run's model family scores pairs (pooled cosine,
or token-wise for FILIP). This is the suite behind the README's side-by-side report.
"""

import ml_collections


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    del arg
    c = ml_collections.ConfigDict()
    c.evals = ml_collections.ConfigDict()
    c.evals.zeroshot = ml_collections.ConfigDict(dict(
        kind="zeroshot", dataset="fashion_mnist", split="test", batch_size=1000))
    c.evals.retrieval = ml_collections.ConfigDict(dict(
        kind="retrieval", dataset="fashion_mnist", split="test", num_images=1000,
        captions_per_image=5, relevance="class"))
    return c
