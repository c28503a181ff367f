"""The one batch type every training source yields, the train step reads and every model's
apply hook (`model(batch, train=..., rng=...)`) consumes.

- "image": uint8 [b, H, W, c] from the data (the step normalises it on device, so a model sees
  float32 (x / 255 - mean) / std);
- "text": int32 token ids [b, L] and "text_mask": bool [b, L] (True on real tokens);
- "label": int32 [b], class labels where the source has them (-1 where it has none).
Sources may add keys of their own (the objectives that need them say so); every array is
batch-major, so one sharding splits all of them.
"""

from typing import TypedDict

import numpy as np

IMAGE, TEXT, TEXT_MASK, LABEL = "image", "text", "text_mask", "label"


class Batch(TypedDict, total=False):
    """Arrays of one global (or per-process) batch; see the module doc."""

    image: np.ndarray
    text: np.ndarray
    text_mask: np.ndarray
    label: np.ndarray
