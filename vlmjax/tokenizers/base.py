"""The interface every tokenizer implements, plus the padding and spec helpers they share."""

from __future__ import annotations

import abc
import itertools
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from vlmjax.errors import VlmjaxError

SPEC_FILE = "tokenizer_spec.json"
PAD_ID = 0


class TokenizerError(VlmjaxError, ValueError):
    """A tokenizer cannot be built, loaded or used; the message names the problem and the fix."""


class Tokenizer(abc.ABC):
    """Turns captions into fixed-length id/mask arrays and back; subclasses wrap one library."""

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can emit (special tokens included), to size embeddings."""

    @abc.abstractmethod
    def encode(self, texts: Sequence[str], context_length: int) -> tuple[np.ndarray, np.ndarray]:
        """Encode texts to int32 ids [N, L] and a bool mask [N, L] that is True at real tokens.

        Padding uses id 0 but is only ever marked by the mask. Over-long texts are
        truncated so the end-of-text token (if the tokenizer has one) stays the last real token.
        """

    @abc.abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Turn ids back into text, dropping special tokens, to inspect what the model saw."""

    @abc.abstractmethod
    def save(self, directory: str) -> None:
        """Write the tokenizer files and tokenizer_spec.json so load_tokenizer can rebuild it."""


def check_texts(texts: Sequence[str]) -> list[str]:
    """Return texts as a list, rejecting a bare string (which would be encoded per character)."""
    if isinstance(texts, str):
        raise TokenizerError(
            "encode() takes a sequence of strings, got a single str; wrap it in a list: [text]"
        )
    return list(texts)


def check_context_length(context_length: int, minimum: int = 2) -> None:
    """Reject context lengths that cannot hold the start and end tokens."""
    if int(context_length) < minimum:
        raise TokenizerError(
            f"context_length={context_length} is too small; it must be at least {minimum} "
            "to hold the start/end-of-text tokens (set model.context_length, e.g. 77)"
        )


def pad_batch(
    seqs: Sequence[Sequence[int]], context_length: int, keep_last: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Pack variable-length id lists into padded [N, L] ids and an explicit mask, vectorised.

    Sequences longer than context_length are cut to it; with keep_last their final id
    (the end-of-text token) replaces the last kept id, as CLIP does.
    """
    n, length = len(seqs), int(context_length)
    lengths = np.fromiter(map(len, seqs), dtype=np.int64, count=n)
    flat = np.fromiter(
        itertools.chain.from_iterable(seqs), dtype=np.int32, count=int(lengths.sum())
    )
    kept = np.minimum(lengths, length)
    mask = np.arange(length)[None, :] < kept[:, None]
    ids = np.full((n, length), PAD_ID, dtype=np.int32)
    if kept.sum() == flat.size:
        ids[mask] = flat
        return ids, mask
    starts = np.cumsum(lengths) - lengths
    kept_starts = np.cumsum(kept) - kept
    within = np.arange(int(kept.sum())) - np.repeat(kept_starts, kept)
    ids[mask] = flat[np.repeat(starts, kept) + within]
    if keep_last:
        over = np.nonzero(lengths > length)[0]
        ids[over, length - 1] = flat[starts[over] + lengths[over] - 1]
    return ids, mask


def write_spec(directory: str, spec: dict[str, Any]) -> None:
    """Write tokenizer_spec.json (must contain "kind") into directory, creating it if needed."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, SPEC_FILE), "w", encoding="utf-8") as f:
        json.dump(spec, f, indent=2, sort_keys=True)
        f.write("\n")


def read_spec(directory: str) -> dict[str, Any]:
    """Read tokenizer_spec.json from a directory written by Tokenizer.save."""
    path = os.path.join(directory, SPEC_FILE)
    if not os.path.isfile(path):
        raise TokenizerError(
            f"no {SPEC_FILE} in {directory!r}; "
            "point tokenizer.path at a directory written by Tokenizer.save()"
        )
    try:
        with open(path, encoding="utf-8") as f:
            spec = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise TokenizerError(
            f"cannot read {path}: {e}; re-save the tokenizer with Tokenizer.save()"
        ) from e
    if not isinstance(spec, dict) or "kind" not in spec:
        raise TokenizerError(
            f'{path} has no "kind" entry; re-save the tokenizer with Tokenizer.save()'
        )
    return spec


def require_file(path: str, what: str, hint: str = "set tokenizer.path to it") -> str:
    """Return path if it is a file, else raise a TokenizerError naming it and the config key."""
    if not path or not os.path.isfile(path):
        raise TokenizerError(f"{what} not found at {path!r}; {hint}")
    return path
