"""A Tokenizer backed by any Hugging Face `tokenizers.Tokenizer` (CLIP, trained, tokenizer.json)."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence

import numpy as np
import tokenizers

from vlmjax.tokenizers.base import (
    Tokenizer,
    TokenizerError,
    check_context_length,
    check_texts,
    pad_batch,
    require_file,
    write_spec,
)
from vlmjax.tokenizers.text_clean import clip_clean

logger = logging.getLogger(__name__)

TOKENIZER_JSON = "tokenizer.json"


class HFTokenizer(Tokenizer):
    """Wraps a `tokenizers.Tokenizer`: batched Rust encoding, truncation that keeps the end token.

    Special-token strings inside captions (e.g. a literal "<|endoftext|>") are encoded as
    ordinary text, never as the special id, so data cannot inject control tokens.
    `clip_clean` applies open_clip's Python-side clean-up (ftfy, HTML unescape) first.
    `source` records which kind built it (clip_bpe, trained_bpe, hf_json), for logs and specs.
    """

    def __init__(
        self, tokenizer: tokenizers.Tokenizer, clip_clean: bool = False, source: str = "hf_json"
    ) -> None:
        """Take ownership of `tokenizer`; its own truncation and padding settings are dropped."""
        self._tok = tokenizer
        self._tok.no_truncation()
        self._tok.no_padding()
        self._tok.encode_special_tokens = True
        self._encode_batch = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)
        self._lock = threading.Lock()  # encode() toggles the tokenizer's truncation setting
        self.clip_clean = clip_clean
        self.source = source

    @classmethod
    def from_file(cls, path: str, clip_clean: bool = False, source: str = "hf_json") -> HFTokenizer:
        """Load a Hugging Face tokenizer.json (e.g. one saved by `save`)."""
        require_file(
            path, "tokenizer.json", "set tokenizer.path to a Hugging Face tokenizer.json file"
        )
        try:
            tok = tokenizers.Tokenizer.from_file(path)
        except Exception as e:  # the Rust side raises plain Exception subclasses
            raise TokenizerError(
                f"cannot parse {path} as a Hugging Face tokenizer.json: {e}"
            ) from e
        return cls(tok, clip_clean=clip_clean, source=source)

    def __getstate__(self) -> dict[str, object]:
        """Pickle as tokenizer.json text (for data-loader worker processes); the lock is rebuilt."""
        return {"json": self._tok.to_str(), "clip_clean": self.clip_clean, "source": self.source}

    def __setstate__(self, state: dict[str, object]) -> None:
        """Rebuild from __getstate__'s output."""
        tok = tokenizers.Tokenizer.from_str(str(state["json"]))
        self.__init__(tok, clip_clean=bool(state["clip_clean"]), source=str(state["source"]))

    @property
    def hf_tokenizer(self) -> tokenizers.Tokenizer:
        """The wrapped `tokenizers.Tokenizer`, for callers that need its full API."""
        return self._tok

    @property
    def vocab_size(self) -> int:
        """Vocabulary size including added/special tokens."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        """Id of a token string (e.g. "<|endoftext|>"), or None if it is not in the vocabulary."""
        return self._tok.token_to_id(token)

    def encode(self, texts: Sequence[str], context_length: int) -> tuple[np.ndarray, np.ndarray]:
        """Encode a batch in Rust; the post-processor's end token survives truncation."""
        texts = check_texts(texts)
        check_context_length(context_length)
        if self.clip_clean:
            texts = [clip_clean(t) for t in texts]
        with self._lock:
            try:
                self._tok.enable_truncation(max_length=int(context_length))
                encodings = self._encode_batch(texts, add_special_tokens=True)
            except Exception as e:
                raise TokenizerError(
                    f"encoding failed (context_length={context_length}): {e}"
                ) from e
            finally:
                self._tok.no_truncation()
        return pad_batch([e.ids for e in encodings], context_length)

    def decode(self, ids: Sequence[int]) -> str:
        """Decode ids to text without special tokens; surrounding whitespace is stripped."""
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True).strip()

    def save(self, directory: str) -> None:
        """Write tokenizer.json and tokenizer_spec.json into directory."""
        os.makedirs(directory, exist_ok=True)
        self._tok.save(os.path.join(directory, TOKENIZER_JSON))
        write_spec(
            directory,
            {
                "kind": "hf_json",
                "file": TOKENIZER_JSON,
                "clip_clean": self.clip_clean,
                "source": self.source,
            },
        )
        logger.info("saved %s tokenizer (vocab %d) to %s", self.source, self.vocab_size, directory)
