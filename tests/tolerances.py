"""Tolerances for comparing two different computations of one quantity (NumPy against XLA, two
XLA graphs, two BLAS kernels), derived from the dtype and the size of the reduction.

The bounds are worst-case, so they hold for any summation order, blocking, vector width or FMA
use (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., Lemma 3.1 and Eq. 3.5): a
sum of k products computed in floating point differs from the exact sum by at most
gamma(k) * sum |products|, gamma(k) = k u / (1 - k u), u = eps / 2 the unit roundoff. Two
computations each within that bound differ by at most twice it. Exact comparisons stay only
where the very same program runs twice.
"""

from collections.abc import Mapping

import numpy as np


def unit_roundoff(dtype: type = np.float32) -> float:
    """u = eps / 2: the largest relative error of one correctly rounded operation."""
    return float(np.finfo(dtype).eps) / 2


def gamma(k: int, dtype: type = np.float32) -> float:
    """Higham's gamma_k: the relative error bound of k successive roundings."""
    ku = k * unit_roundoff(dtype)
    assert ku < 1, f"no bound: {k} roundings of {np.dtype(dtype).name} exceed its precision"
    return ku / (1 - ku)


def dot_atol(k: int, magnitude: float = 1.0, dtype: type = np.float32) -> float:
    """Largest |a - b| between two computations a, b of a length-k dot product sum_i x_i y_i
    with sum_i |x_i y_i| <= magnitude (1 for unit vectors, by Cauchy-Schwarz), both in `dtype`
    and in any order. Rounding the inputs to `dtype` first counts as one more rounding."""
    return 2 * gamma(k, dtype) * magnitude


def ambiguous_rows(scores: np.ndarray, atol: float) -> np.ndarray:
    """Rows whose top two scores are within 2 * atol: another computation of `scores`, each
    entry within `atol`, may pick a different argmax there (nowhere else)."""
    top2 = np.sort(np.asarray(scores, np.float64), axis=-1)[..., -2:]
    return top2[..., 1] - top2[..., 0] <= 2 * atol


def accuracy_slack(scores: np.ndarray, atol: float) -> float:
    """How far the top-1 accuracy of `scores` can move when every score moves by up to `atol`:
    the fraction of rows whose argmax is not decided at that precision."""
    return float(np.mean(ambiguous_rows(scores, atol)))


def image_tower_atol(model: Mapping) -> float:
    """How far two programs (fused or sharded differently) may place a ViT's unit image
    embeddings apart (config.model as a dict): float32 rounding of the reductions on the
    tower's longest path added up to first order, i.e. dot_atol over their summed lengths:
    patch embedding; per block LayerNorm, q/k/v, scores, softmax sum, attention average,
    output, LayerNorm and the two MLP layers; the final LayerNorm, projection, normalisation.
    First order: it does not account for a layer that amplifies relative error."""
    image = model["image"]
    tokens = (image["image_size"] // image["patch_size"]) ** 2 + 1
    head = image["width"] // image["heads"]
    block = 3 * image["width"] + head + 2 * tokens + 2 * image["width"] + image["mlp_dim"]
    return dot_atol(image["patch_size"] ** 2 * image["channels"] + image["depth"] * block
                    + 2 * image["width"] + model["embed_dim"])
