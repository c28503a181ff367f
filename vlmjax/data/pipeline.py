"""grain input pipeline: shuffled, per-process sharded, captioned and augmented batches.

The pipeline shuffles example *indices* and gathers, captions and augments a whole batch with
vectorised NumPy, so the host spends about a millisecond per batch and leaves the cores to
the train step. Randomness is a function of (seed, batch index) only, so the same iterator
state always yields the same batches: that is what makes resume exact.
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


@dataclasses.dataclass
class CaptionAndAugmentBatch(grain.transforms.RandomMap):
    """Example indices -> images, labels, one random caption of each label, flips and shifts."""

    images: np.ndarray  # uint8 [N, H, W, c]
    labels: np.ndarray  # int32 [N]
    table: CaptionTable
    flip: bool = False
    translate: int = 0

    def random_map(self, indices: np.ndarray, rng: np.random.Generator) -> dict:
        images, labels = self.images[indices], self.labels[indices]
        start, stop = self.table.offsets[labels], self.table.offsets[labels + 1]
        caption = start + (rng.random(len(labels)) * (stop - start)).astype(np.int64)
        if self.flip:
            flipped = rng.random(len(labels)) < 0.5
            images = np.where(flipped[:, None, None, None], images[:, :, ::-1], images)
        if self.translate:
            t = self.translate
            images = random_shift(images, rng.integers(-t, t + 1, size=(len(labels), 2)), t)
        return {"image": np.ascontiguousarray(images), "text": self.table.ids[caption],
                "text_mask": self.table.mask[caption], "label": labels.astype(np.int32)}


def train_dataset(images: np.ndarray, labels: np.ndarray, table: CaptionTable, *,
                  local_batch_size: int, seed: int, process_index: int = 0,
                  process_count: int = 1, flip: bool = False, translate: int = 0
                  ) -> grain.MapDataset:
    """Infinite dataset of this process's batches; each epoch is reshuffled."""
    ds = grain.MapDataset.range(len(labels)).shuffle(seed=seed).repeat()
    ds = ds[process_index::process_count]  # each process reads a disjoint share
    ds = ds.batch(local_batch_size, drop_remainder=True)
    return ds.random_map(CaptionAndAugmentBatch(images, labels.astype(np.int32), table, flip,
                                                translate), seed=seed + 1)


def train_iterator(ds: grain.MapDataset, num_threads: int, prefetch: int) -> grain.DatasetIterator:
    """A checkpointable iterator (`get_state` / `set_state`) with background read threads."""
    options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=max(prefetch, 1))
    return iter(ds.to_iter_dataset(options))
