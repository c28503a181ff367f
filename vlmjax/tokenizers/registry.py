"""Build a tokenizer from config (kind + path/texts) and reload one saved with Tokenizer.save."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

from vlmjax.tokenizers.base import Tokenizer, TokenizerError, read_spec, require_file
from vlmjax.tokenizers.clip_bpe import ClipBpeTokenizer
from vlmjax.tokenizers.hf_tokenizer import HFTokenizer
from vlmjax.tokenizers.sentencepiece_tokenizer import SentencePieceTokenizer, train_sentencepiece
from vlmjax.tokenizers.trained_bpe import train_bpe

logger = logging.getLogger(__name__)

KINDS = ("clip_bpe", "hf_json", "sentencepiece", "trained_bpe", "trained_sentencepiece")


def _need_texts(kind: str, texts: Iterable[str] | None, vocab_size: int) -> Iterable[str]:
    """Check the inputs of the kinds that train on captions."""
    if texts is None:
        raise TokenizerError(f"tokenizer kind {kind!r} trains on captions but no texts were given")
    if vocab_size <= 0:
        raise TokenizerError(
            f"tokenizer kind {kind!r} needs tokenizer.vocab_size > 0, got {vocab_size}"
        )
    return texts


def build_tokenizer(
    kind: str, path: str = "", vocab_size: int = 0, texts: Iterable[str] | None = None
) -> Tokenizer:
    """Build the tokenizer named by config: load it from path or train it on texts.

    clip_bpe: path = open_clip's .txt.gz or a directory with vocab.json + merges.txt ("" = the
    vocab bundled with an installed open_clip); hf_json: path = tokenizer.json; sentencepiece:
    path = .model; trained_bpe / trained_sentencepiece: texts + vocab_size.
    """
    logger.info("building %s tokenizer (path=%r, vocab_size=%d)", kind, path, vocab_size)
    if kind == "clip_bpe":
        return ClipBpeTokenizer.from_path(path)
    if kind == "hf_json":
        return HFTokenizer.from_file(path)
    if kind == "sentencepiece":
        return SentencePieceTokenizer(path)
    if kind == "trained_bpe":
        return train_bpe(_need_texts(kind, texts, vocab_size), vocab_size)
    if kind == "trained_sentencepiece":
        return train_sentencepiece(_need_texts(kind, texts, vocab_size), vocab_size)
    raise TokenizerError(
        f"unknown tokenizer kind {kind!r}; set tokenizer.kind to one of: {', '.join(KINDS)}"
    )


def load_tokenizer(directory: str) -> Tokenizer:
    """Rebuild the tokenizer that Tokenizer.save wrote into directory (e.g. beside a checkpoint)."""
    spec = read_spec(directory)
    kind = spec["kind"]
    file = os.path.join(directory, str(spec.get("file", "")))
    hint = f"{directory} looks incomplete; re-save the tokenizer with Tokenizer.save()"
    if kind == "hf_json":
        require_file(file, "tokenizer.json", hint)
        return HFTokenizer.from_file(
            file,
            clip_clean=bool(spec.get("clip_clean", False)),
            source=str(spec.get("source", "hf_json")),
        )
    if kind == "sentencepiece":
        require_file(file, "SentencePiece model", hint)
        return SentencePieceTokenizer(
            file, add_bos=bool(spec.get("add_bos", False)), add_eos=bool(spec.get("add_eos", True)),
            ascii_lower=bool(spec.get("ascii_lower", False)), pad_id=int(spec.get("pad_id", 0)),
        )
    raise TokenizerError(
        f"{directory} has a tokenizer of unknown kind {kind!r}; expected hf_json or sentencepiece"
    )
