"""big_vision's closed-form few-shot classifier: ridge regression onto +-1 one-hot targets.

Features are whitened with the shots' mean and standard deviation and given a constant bias
feature (large, so the bias is almost unregularised); one eigendecomposition of the Gram matrix
(x^T x when there are more shots than dimensions, x x^T otherwise) then gives the ridge
solution for every regularisation strength of a grid at the cost of a matrix product each.
"""

import jax
import jax.numpy as jnp
import numpy as np

BIAS_FEATURE = 100.0
L2_GRID = tuple(2.0 ** np.arange(-10, 20))  # big_vision's sweep; its configs fix 2^10


def _whiten(x: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    x = (x - mean) / std
    return jnp.pad(x, ((0, 0), (0, 1)), constant_values=BIAS_FEATURE)


@jax.jit
def _eigen_cache(x: jax.Array, targets: jax.Array) -> dict:
    mean = x.mean(axis=0, keepdims=True)
    std = x.std(axis=0, keepdims=True) + 1e-5
    xw = _whiten(x, mean, std)
    if xw.shape[0] >= xw.shape[1]:  # (x^T x + l I)^-1 x^T y
        eigs, q = jnp.linalg.eigh(xw.T @ xw)
        left, right = q, q.T @ (xw.T @ targets)
    else:  # x^T (x x^T + l I)^-1 y
        eigs, q = jnp.linalg.eigh(xw @ xw.T)
        left, right = xw.T @ q, q.T @ targets
    return {"eigs": eigs, "left": left, "right": right, "mean": mean, "std": std}


@jax.jit
def _weights(cache: dict, l2: jax.Array) -> jax.Array:
    """[len(l2), d + 1, C]: the ridge solution for each regularisation strength."""
    scale = 1.0 / (cache["eigs"][None, :] + l2[:, None])  # [R, k]
    return jnp.einsum("dk,rk,kc->rdc", cache["left"], scale, cache["right"])


def ridge_weights(x: np.ndarray, labels: np.ndarray, num_classes: int,
                  l2_grid: tuple[float, ...] = L2_GRID) -> tuple[np.ndarray, dict]:
    """Weights [R, d + 1, C] (last row: the bias feature's) per grid value, and the whitening."""
    targets = 2.0 * jax.nn.one_hot(labels, num_classes) - 1.0
    cache = _eigen_cache(jnp.asarray(x, jnp.float32), targets)
    weights = _weights(cache, jnp.asarray(l2_grid, jnp.float32))
    return np.asarray(weights), {"mean": np.asarray(cache["mean"]), "std": np.asarray(cache["std"])}


def ridge_scores(weights: np.ndarray, whitening: dict, x: np.ndarray) -> np.ndarray:
    """[R, n, C] class scores of `x` under each grid value's weights."""
    xw = np.asarray(_whiten(jnp.asarray(x, jnp.float32), whitening["mean"], whitening["std"]))
    return np.einsum("nd,rdc->rnc", xw, weights)
