"""L2-regularised multinomial logistic regression on frozen features, fit by L-BFGS in JAX.

The objective is scikit-learn's (`LogisticRegression(C=c)` with lbfgs), divided by the number of
examples: mean cross-entropy + ||W||^2 / (2 c N), the bias unpenalised. Fits for several C run
at once (vmap), which is what makes the CLIP paper's regularisation sweep cheap: a coarse grid
of C from 1e-6 to 1e6 every two decades, then the interval around the best value is halved
until it reaches 8 steps per decade (CLIP, appendix A.3).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu

COARSE_LOG10_C = tuple(range(-6, 7, 2))  # 1e-6 ... 1e6
FINEST_STEP = 1 / 8  # decades


@dataclasses.dataclass(frozen=True)
class LinearHead:
    """A fitted classifier: logits = features @ w + b."""

    w: np.ndarray  # [d, C]
    b: np.ndarray  # [C]
    c: float  # the inverse regularisation strength it was fit with

    def logits(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(features, np.float32) @ self.w + self.b


FITS_PER_CALL = len(COARSE_LOG10_C)  # C values fit together: one compiled shape per data shape


def _objective(params: dict, x: jax.Array, y: jax.Array, weight: jax.Array, c: jax.Array
               ) -> jax.Array:
    """Weighted mean cross-entropy + ||W||^2 / (2 c sum(weight)); weight 0 marks padding rows."""
    logits = x @ params["w"] + params["b"]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    total = jnp.sum(weight)
    return jnp.sum(weight * ce) / total + jnp.sum(params["w"] ** 2) / (2 * c * total)


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _fit_many(x: jax.Array, y: jax.Array, weight: jax.Array, cs: jax.Array, num_classes: int,
              max_iter: int, tol: float) -> dict:
    """Fits one head per value of `cs` (vmapped L-BFGS, zoom line search); leaves [len(cs), ...].

    Stops when the largest gradient entry is below `tol` (scikit-learn's lbfgs criterion) or
    after `max_iter` iterations.
    """

    def fit(c: jax.Array) -> dict:
        fun = functools.partial(_objective, x=x, y=y, weight=weight, c=c)
        # Backtracking (Armijo) line search: compiles in about half the time of optax's zoom
        # search and converges the same on this convex objective.
        opt = optax.lbfgs(linesearch=optax.scale_by_backtracking_linesearch(
            max_backtracking_steps=20, store_grad=True))
        value_and_grad = optax.value_and_grad_from_state(fun)
        init = {"w": jnp.zeros((x.shape[1], num_classes), x.dtype),
                "b": jnp.zeros((num_classes,), x.dtype)}

        def step(carry):
            params, state = carry
            value, grad = value_and_grad(params, state=state)
            updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=fun)
            return optax.apply_updates(params, updates), state

        def running(carry):
            _, state = carry
            count, grad = otu.tree_get(state, "count"), otu.tree_get(state, "grad")
            largest = jnp.max(jnp.stack([jnp.max(jnp.abs(g)) for g in jax.tree.leaves(grad)]))
            return (count == 0) | ((count < max_iter) & (largest > tol))

        params, _ = jax.lax.while_loop(running, step, (init, opt.init(init)))
        return params

    return jax.vmap(fit)(cs)


def fit_logistic(features: np.ndarray, labels: np.ndarray, num_classes: int, cs: list[float],
                 max_iter: int = 1000, tol: float = 1e-4, pad_rows_to: int = 0,
                 fits_per_call: int = FITS_PER_CALL) -> list[LinearHead]:
    """One head per inverse regularisation strength in `cs`.

    C values are fit `fits_per_call` at a time (the last group padded) and rows are zero-weight
    padded to `pad_rows_to`, so that sweeps, refits and few-shot sets of different sizes reuse
    one compiled program.
    """
    n = len(labels)
    rows = max(n, pad_rows_to)
    x = np.zeros((rows, features.shape[1]), np.float32)
    x[:n] = features
    y = np.zeros((rows,), np.int32)
    y[:n] = labels
    weight = (np.arange(rows) < n).astype(np.float32)
    heads, width = [], fits_per_call
    for start in range(0, len(cs), width):
        chunk = list(cs[start: start + width])
        padded = chunk + [chunk[-1]] * (width - len(chunk))
        params = jax.device_get(_fit_many(jnp.asarray(x), jnp.asarray(y), jnp.asarray(weight),
                                          jnp.asarray(padded, jnp.float32), num_classes,
                                          max_iter, tol))
        heads += [LinearHead(w=params["w"][i], b=params["b"][i], c=float(c))
                  for i, c in enumerate(chunk)]
    return heads


def accuracy(head: LinearHead, features: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(head.logits(features), axis=1) == labels))


def search_c(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
             num_classes: int, max_iter: int = 1000, pad_rows_to: int = 0
             ) -> tuple[float, dict[float, float]]:
    """CLIP's coarse-to-fine sweep of C on a validation split: (best C, {C: val accuracy}).

    Ties go to the smaller C (the stronger regularisation).
    """
    scores: dict[float, float] = {}

    def evaluate(log_cs: list[float]) -> None:
        todo = [lc for lc in log_cs if lc not in scores and -6 <= lc <= 6]
        if todo:
            heads = fit_logistic(*train, num_classes, [10.0 ** lc for lc in todo], max_iter,
                                 pad_rows_to=pad_rows_to)
            scores.update({lc: accuracy(h, *val) for lc, h in zip(todo, heads, strict=True)})

    evaluate([float(lc) for lc in COARSE_LOG10_C])
    step = 2.0
    while step > FINEST_STEP:
        step /= 2
        best = max(sorted(scores), key=lambda lc: scores[lc])
        evaluate([best - step, best + step])
    best = max(sorted(scores), key=lambda lc: scores[lc])
    return 10.0 ** best, {10.0 ** lc: acc for lc, acc in sorted(scores.items())}
