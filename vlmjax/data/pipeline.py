"""grain input pipeline: shuffled, per-process sharded, captioned and augmented batches.

The pipeline shuffles example *indices* and gathers, captions and augments a whole batch with
vectorised NumPy, so the host spends about a millisecond per batch and leaves the cores to
the train step. Randomness is a function of (seed, global example position) only, so the same
iterator state always yields the same batches (exact resume) and the global batch does not
depend on how many processes share it.
"""

import dataclasses

import grain
import numpy as np

from vlmjax.data.captions import CaptionTable


def random_shift(images: np.ndarray, shifts: np.ndarray, pad: int) -> np.ndarray:
    """Shifts each image [b, H, W, c] by (dy, dx) in [-pad, pad], filling with zeros."""
    b, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    rows = (pad + shifts[:, 0])[:, None] + np.arange(h)[None]  # [b, H]
    cols = (pad + shifts[:, 1])[:, None] + np.arange(w)[None]  # [b, W]
    return padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


def example_uniforms(seed: int, positions: np.ndarray, streams: int) -> np.ndarray:
    """[n, streams] uniforms in [0, 1), a pure function of (seed, global example position).

    A counter-based hash (splitmix64) rather than a per-batch generator, so an example's
    caption and augmentation do not depend on how the global batch is split over processes.
    """
    with np.errstate(over="ignore"):
        x = positions.astype(np.uint64)[:, None] * np.uint64(streams) + np.arange(
            streams, dtype=np.uint64)[None]
        x = x + np.uint64(seed + 1) * np.uint64(0x9E3779B97F4A7C15)
        for shift, mult in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
            x = (x ^ (x >> np.uint64(shift))) * np.uint64(mult)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


@dataclasses.dataclass
class CaptionAndAugmentBatch(grain.transforms.MapWithIndex):
    """Global batch k of example indices -> this process's rows: images, labels, a random caption
    of each label, flips and shifts."""

    images: np.ndarray  # uint8 [N, H, W, c]
    labels: np.ndarray  # int32 [N]
    table: CaptionTable
    rows: slice  # this process's rows of every global batch
    seed: int
    flip: bool = False
    translate: int = 0

    def map_with_index(self, index: int, indices: np.ndarray) -> dict:
        positions = index * len(indices) + np.arange(len(indices))[self.rows]
        indices = indices[self.rows]
        u = example_uniforms(self.seed, positions, 4)
        images, labels = self.images[indices], self.labels[indices]
        start, stop = self.table.offsets[labels], self.table.offsets[labels + 1]
        caption = start + (u[:, 0] * (stop - start)).astype(np.int64)
        if self.flip:
            images = np.where((u[:, 1] < 0.5)[:, None, None, None], images[:, :, ::-1], images)
        if self.translate:
            t = self.translate
            shifts = np.minimum((u[:, 2:4] * (2 * t + 1)).astype(np.int64), 2 * t) - t
            images = random_shift(images, shifts, t)
        return {"image": np.ascontiguousarray(images), "text": self.table.ids[caption],
                "text_mask": self.table.mask[caption], "label": labels.astype(np.int32)}


def train_dataset(images: np.ndarray, labels: np.ndarray, table: CaptionTable, *,
                  global_batch_size: int, seed: int, rows: slice | None = None,
                  flip: bool = False, translate: int = 0) -> grain.MapDataset:
    """Infinite dataset of this process's `rows` of each global batch; each epoch reshuffled.

    Every process walks the same shuffled index stream (indices are cheap) and reads only the
    images of its rows, so the global batch is the same whatever the number of processes.
    """
    ds = grain.MapDataset.range(len(labels)).shuffle(seed=seed).repeat()
    ds = ds.batch(global_batch_size, drop_remainder=True)
    return ds.map_with_index(CaptionAndAugmentBatch(
        images, labels.astype(np.int32), table, rows if rows is not None else slice(None),
        seed + 1, flip, translate))


def train_iterator(ds: grain.MapDataset, num_threads: int, prefetch: int) -> grain.DatasetIterator:
    """A checkpointable iterator (`get_state` / `set_state`) with background read threads."""
    options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=max(prefetch, 1))
    return iter(ds.to_iter_dataset(options))
