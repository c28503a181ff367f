"""Train a small CLIP-style byte-level BPE on a caption corpus, in-process and deterministically."""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from collections.abc import Iterable

import tokenizers
from tokenizers import models

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


def _word_counts(texts: Iterable[str]) -> Counter[str]:
    """Byte-level words of the corpus, split exactly as the CLIP pipeline splits them."""
    tok = tokenizers.Tokenizer(models.BPE(end_of_word_suffix=END_OF_WORD))
    set_clip_text_pipeline(tok)
    counts: Counter[str] = Counter()
    for text in texts:
        normalized = tok.normalizer.normalize_str(clip_clean(text))
        counts.update(word for word, _ in tok.pre_tokenizer.pre_tokenize_str(normalized))
    return counts


def _merge_pair(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return tuple(out)


def _train_merges(texts: Iterable[str], max_merges: int) -> list[tuple[str, str]]:
    """Learn BPE merges: repeatedly merge the most frequent adjacent pair.

    Ties are broken by the pair itself (lexicographically), so the result depends on the texts
    only. tokenizers' BpeTrainer breaks ties by hash-map order, which differs between
    processes and made runs with the same seed train different tokenizers.
    """
    words = {tuple(w[:-1]) + (w[-1] + END_OF_WORD,): n for w, n in _word_counts(texts).items()}
    merges: list[tuple[str, str]] = []
    for _ in range(max_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, n in words.items():
            for pair in itertools.pairwise(symbols):
                pairs[pair] += n
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        words = {_merge_pair(symbols, best): n for symbols, n in words.items()}
    return merges


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
