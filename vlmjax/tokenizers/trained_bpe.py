"""Train a small CLIP-style byte-level BPE on a caption corpus, in-process and deterministically."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable

import tokenizers
from tokenizers import models, pre_tokenizers, trainers

from vlmjax.tokenizers.base import TokenizerError
from vlmjax.tokenizers.clip_bpe import (
    END_OF_WORD,
    ClipBpeTokenizer,
    clip_vocab,
    set_clip_text_pipeline,
)
from vlmjax.tokenizers.text_clean import clip_clean

logger = logging.getLogger(__name__)

# 256 byte symbols, the same 256 with </w>, and <|startoftext|> / <|endoftext|>.
BASE_VOCAB_SIZE = 2 * 256 + 2


def _train_merges(texts: Iterable[str], max_merges: int) -> list[tuple[str, str]]:
    """Run tokenizers' BpeTrainer with CLIP's pre-tokenisation and return its merges in order."""
    tok = tokenizers.Tokenizer(models.BPE(end_of_word_suffix=END_OF_WORD))
    set_clip_text_pipeline(tok)
    trainer = trainers.BpeTrainer(
        vocab_size=max_merges
        + 2 * 256,  # the trainer's alphabet (<= 512 symbols) counts towards it
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix=END_OF_WORD,
    )
    tok.train_from_iterator((clip_clean(t) for t in texts), trainer=trainer)
    merges = json.loads(tok.to_str())["model"]["merges"]
    # tokenizers >= 0.20 stores merges as pairs; older versions as "a b" strings.
    pairs = [m if isinstance(m, list) else m.split(" ", 1) for m in merges]
    return [(a, b) for a, b in pairs]


def train_bpe(texts: Iterable[str], vocab_size: int) -> ClipBpeTokenizer:
    """Train a byte-level BPE of at most vocab_size ids that encodes like CLIP (SOT ... EOT).

    The vocabulary uses CLIP's layout (every byte, with and without </w>, then merged tokens,
    then SOT/EOT), so any text encodes without unknown tokens. The same texts give the same
    tokenizer. A small corpus may support fewer merges, giving a smaller vocabulary.
    """
    if vocab_size <= BASE_VOCAB_SIZE:
        raise TokenizerError(
            f"trained_bpe needs vocab_size > {BASE_VOCAB_SIZE} (byte symbols + special tokens), "
            f"got {vocab_size}; set tokenizer.vocab_size to e.g. 4096"
        )
    wanted = vocab_size - BASE_VOCAB_SIZE
    merges: list[tuple[str, str]] = []
    tokens = set(clip_vocab([]))
    new_tokens = 0
    for merge in _train_merges(texts, wanted):
        token = "".join(merge)
        if token not in tokens:
            if new_tokens == wanted:
                break
            tokens.add(token)
            new_tokens += 1
        merges.append(merge)
    tok = ClipBpeTokenizer.from_merges(merges, source="trained_bpe")
    logger.info(
        "trained BPE tokenizer: %d merges, vocab %d (requested %d)",
        len(merges),
        tok.vocab_size,
        vocab_size,
    )
    return tok
