"""Which examples a few-shot or unsupervised method may learn from.

Few-shot: per seed, each class's examples are shuffled once; the first k are the k shots
(so the k-shot set grows with k, as big_vision samples), and the next `val_shots` form the
validation set that picks the method's hyperparameters (CoOp's convention: min(k, 4) per class).
Unsupervised (UPL): the zero-shot prediction is the pseudo-label, and the `per_class` images most
confidently predicted as each class are kept.
"""

import numpy as np

from vlmjax.errors import DataError


def class_orders(labels: np.ndarray, num_classes: int, seed: int) -> list[np.ndarray]:
    """Each class's example indices in a random order fixed by `seed`."""
    rng = np.random.default_rng(seed)
    return [rng.permutation(np.flatnonzero(labels == c)) for c in range(num_classes)]


def few_shot_split(labels: np.ndarray, num_classes: int, shots: int, seed: int,
                   val_shots: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(train indices: `shots` per class, validation indices: the next `val_shots` per class).

    `val_shots` defaults to min(shots, 4). A class with too few examples is a DataError.
    """
    val_shots = min(shots, 4) if val_shots is None else val_shots
    orders = class_orders(labels, num_classes, seed)
    short = [c for c, order in enumerate(orders) if len(order) < shots + val_shots]
    if short:
        raise DataError(f"{shots}-shot sampling needs {shots + val_shots} examples of every class "
                        f"(shots + validation); classes {short[:10]} have fewer")
    train = np.concatenate([order[:shots] for order in orders])
    val = np.concatenate([order[shots: shots + val_shots] for order in orders])
    return train, val


def carve_validation(n: int, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices): a random `fraction` of range(n) held out."""
    order = np.random.default_rng(seed).permutation(n)
    cut = int(round(n * fraction))
    return np.sort(order[cut:]), np.sort(order[:cut])


def confident_per_class(probs: np.ndarray, per_class: int, skip: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """UPL's pseudo-labelled set: (indices, pseudo-labels) of the images ranked skip .. skip +
    per_class - 1 by confidence among those predicted as each class (fewer if a class has fewer).

    `skip` = per_class gives the next most confident images: a label-free validation set.
    """
    predicted = probs.argmax(axis=1)
    confidence = probs.max(axis=1)
    indices, pseudo = [], []
    for c in range(probs.shape[1]):
        members = np.flatnonzero(predicted == c)
        ranked = members[np.argsort(-confidence[members], kind="stable")][skip: skip + per_class]
        indices.append(ranked)
        pseudo.append(np.full(len(ranked), c, np.int64))
    return np.concatenate(indices), np.concatenate(pseudo)
