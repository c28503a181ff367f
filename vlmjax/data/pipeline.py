"""grain input pipeline: shuffled, per-process sharded, captioned and augmented batches.

Randomness is a function of (seed, element index) only, so the same iterator state always
yields the same batches: that is what makes resume exact.
"""

import dataclasses

import grain
import numpy as np

from vlmjax.data.captions import CaptionTable


class _ImagesAndLabels:
    """A random-access source over in-memory arrays."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return self.images[index], int(self.labels[index])


@dataclasses.dataclass
class CaptionAndAugment(grain.transforms.RandomMap):
    """Picks a random caption of the image's class and applies flip / translation."""

    table: CaptionTable
    flip: bool = False
    translate: int = 0

    def random_map(self, element: tuple[np.ndarray, int], rng: np.random.Generator) -> dict:
        image, label = element
        k = int(rng.integers(self.table.offsets[label], self.table.offsets[label + 1]))
        if self.flip and rng.random() < 0.5:
            image = image[:, ::-1]
        if self.translate:
            t = self.translate
            dy, dx = rng.integers(-t, t + 1, size=2)
            padded = np.pad(image, ((t, t), (t, t), (0, 0)))
            h, w = image.shape[:2]
            image = padded[t + dy: t + dy + h, t + dx: t + dx + w]
        return {"image": np.ascontiguousarray(image), "text": self.table.ids[k],
                "text_mask": self.table.mask[k], "label": np.int32(label)}


def train_dataset(images: np.ndarray, labels: np.ndarray, table: CaptionTable, *,
                  local_batch_size: int, seed: int, process_index: int = 0,
                  process_count: int = 1, flip: bool = False, translate: int = 0
                  ) -> grain.MapDataset:
    """Infinite dataset of this process's batches; epochs are reshuffled, never truncated."""
    ds = grain.MapDataset.source(_ImagesAndLabels(images, labels)).shuffle(seed=seed).repeat()
    ds = ds[process_index::process_count]  # each process reads a disjoint share
    ds = ds.random_map(CaptionAndAugment(table, flip, translate), seed=seed + 1)
    return ds.batch(local_batch_size, drop_remainder=True)


def train_iterator(ds: grain.MapDataset, num_threads: int, prefetch: int) -> grain.DatasetIterator:
    """A checkpointable iterator (`get_state` / `set_state`) with background read threads."""
    options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=max(prefetch, 1))
    return iter(ds.to_iter_dataset(options))
