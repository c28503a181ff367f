"""Tip-Adapter (Zhang et al. 2022): a training-free cache model added to zero-shot logits.

The few-shot features are the cache keys F and their one-hot labels the values L. A query f
gets `zs_scale * f W^T + alpha * exp(-beta (1 - f F^T)) L`, where W is the zero-shot
classifier. With alpha = 0 this is zero-shot exactly. alpha and beta are searched on a
validation set over the paper's grid (beta in [0.1, 7], 200 steps; alpha in [0.1, 3], 20
steps). Tip-Adapter-F also fine-tunes the keys (AdamW, lr 1e-3, eps 1e-4, cosine schedule)
with cross-entropy on the shots, then searches again.

Deviation: the paper fine-tunes on augmented views of the shots; here the frozen features of
the shots themselves are the training set (features are extracted once per checkpoint).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

ZEROSHOT_SCALE = 100.0  # CLIP's logit scale, which the paper's alpha / beta grid assumes
BETAS = tuple(0.1 + i * (7.0 - 0.1) / 200 for i in range(200))
ALPHAS = tuple(0.1 + i * (3.0 - 0.1) / 20 for i in range(20))


@dataclasses.dataclass(frozen=True)
class TipAdapter:
    """Zero-shot classifier [C, e] + cache keys [n, e] with labels [n]."""

    classifier: np.ndarray
    keys: np.ndarray
    labels: np.ndarray
    alpha: float = 1.0
    beta: float = 5.5

    def logits(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(tip_logits(jnp.asarray(features), jnp.asarray(self.classifier),
                                     jnp.asarray(self.keys), self.values(), self.alpha, self.beta))

    def values(self) -> jax.Array:
        return jax.nn.one_hot(self.labels, self.classifier.shape[0])


def tip_logits(features: jax.Array, classifier: jax.Array, keys: jax.Array, values: jax.Array,
               alpha: float | jax.Array, beta: float | jax.Array) -> jax.Array:
    """[n, C] Tip-Adapter logits of L2-normalised features."""
    zeroshot = ZEROSHOT_SCALE * features @ classifier.T
    affinity = features @ keys.T
    return zeroshot + alpha * jnp.exp(-beta * (1.0 - affinity)) @ values


@jax.jit
def _grid_accuracy(features: jax.Array, labels: jax.Array, classifier: jax.Array, keys: jax.Array,
                   values: jax.Array, alphas: jax.Array, betas: jax.Array) -> jax.Array:
    """[len(betas), len(alphas)] accuracies over the whole (beta, alpha) grid."""
    zeroshot = ZEROSHOT_SCALE * features @ classifier.T
    affinity = features @ keys.T

    def per_beta(beta: jax.Array) -> jax.Array:
        cache = jnp.exp(-beta * (1.0 - affinity)) @ values  # [n, C]
        logits = zeroshot[None] + alphas[:, None, None] * cache[None]
        return jnp.mean(jnp.argmax(logits, axis=-1) == labels[None], axis=-1)

    return jax.lax.map(per_beta, betas)


def search(adapter: TipAdapter, features: np.ndarray, labels: np.ndarray) -> TipAdapter:
    """The adapter with the (alpha, beta) of the grid that is most accurate on (features, labels);
    ties go to the first in grid order."""
    acc = np.asarray(_grid_accuracy(jnp.asarray(features), jnp.asarray(labels),
                                    jnp.asarray(adapter.classifier), jnp.asarray(adapter.keys),
                                    adapter.values(), jnp.asarray(ALPHAS), jnp.asarray(BETAS)))
    b, a = np.unravel_index(np.argmax(acc), acc.shape)
    return dataclasses.replace(adapter, alpha=ALPHAS[a], beta=BETAS[b])


@jax.jit
def _train_keys(keys: jax.Array, labels: jax.Array, classifier: jax.Array, batches: jax.Array,
                alpha: jax.Array, beta: jax.Array, lr: jax.Array) -> jax.Array:
    """Keys after one AdamW step per row of `batches` (indices into the shots)."""
    features, values = keys, jax.nn.one_hot(labels, classifier.shape[0])
    schedule = optax.cosine_decay_schedule(lr, batches.shape[0])
    opt = optax.adamw(schedule, eps=1e-4, weight_decay=0.01)

    def loss(k: jax.Array, rows: jax.Array) -> jax.Array:
        logits = tip_logits(features[rows], classifier, k, values, alpha, beta)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels[rows]).mean()

    def step(carry: tuple, rows: jax.Array) -> tuple[tuple, None]:
        k, state = carry
        updates, state = opt.update(jax.grad(loss)(k, rows), state, k)
        return (optax.apply_updates(k, updates), state), None

    (keys, _), _ = jax.lax.scan(step, (keys, opt.init(keys)), batches)
    return keys


def fine_tune_keys(adapter: TipAdapter, epochs: int = 20, batch_size: int = 256, lr: float = 1e-3,
                   seed: int = 0) -> TipAdapter:
    """Tip-Adapter-F: the cache keys trained with cross-entropy on the shots (keys initialised
    from the shots' features), alpha and beta held at the adapter's values."""
    n = len(adapter.labels)
    steps_per_epoch = -(-n // batch_size)
    # Each epoch a permutation, cut into full batches (topped up from its start).
    order = np.stack([np.resize(np.random.default_rng(seed + e).permutation(n),
                                steps_per_epoch * batch_size) for e in range(epochs)])
    keys = _train_keys(jnp.asarray(adapter.keys), jnp.asarray(adapter.labels),
                       jnp.asarray(adapter.classifier),
                       jnp.asarray(order.reshape(epochs * steps_per_epoch, batch_size)),
                       jnp.float32(adapter.alpha), jnp.float32(adapter.beta), jnp.float32(lr))
    return dataclasses.replace(adapter, keys=np.asarray(keys))
