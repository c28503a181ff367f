"""What a training source is: `data.name` -> a checkpointable iterator of `vlmjax.batch` batches.

An iterator has `next()` -> this process's rows of the next global batch (a dict of NumPy
arrays, uint8 images), `get_state()` -> a JSON-able position and `set_state(position)`: the
checkpoint stores the position, so a resumed run reads exactly the batches it would have read.
"""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class TrainSource:
    """A registered training source."""

    options: Mapping  # its keys in the `data` section beyond the common ones, with defaults
    check: Callable[[Mapping], None]  # (full config) -> ConfigError / DataError if unusable
    # (config, tokenizer, this process's rows of a global batch, process index, process count)
    build: Callable[..., Any]
    # The texts a trained tokenizer (tokenizer.kind="trained_*") learns its vocabulary from;
    # None for sources without a fixed caption vocabulary.
    caption_texts: Callable[[Mapping], list[str]] | None = None
