"""BERT's WordPiece tokenizer from a Hugging Face directory, through the `tokenizers` library.

`tokenizer.path` is a directory written by `BertTokenizer(Fast).save_pretrained` (its
tokenizer.json, else vocab.txt with the casing of tokenizer_config.json: do_lower_case,
strip_accents, tokenize_chinese_chars, as transformers reads them), or one of those files.
Every text becomes [CLS] text [SEP]; over-long texts are cut so that [SEP] stays the last real
token; padding is marked by the mask (id 0, BERT's [PAD]). Saved runs keep the tokenizer as
tokenizer.json (`load_tokenizer` rebuilds it as any tokenizer.json).
"""

from __future__ import annotations

import json
import logging
import os

import tokenizers
from tokenizers import models
from tokenizers.implementations import BertWordPieceTokenizer

from vlmjax.tokenizers.base import TokenizerError
from vlmjax.tokenizers.hf_tokenizer import TOKENIZER_JSON, HFTokenizer

logger = logging.getLogger(__name__)

VOCAB_TXT = "vocab.txt"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL = ("[CLS]", "[SEP]", "[PAD]", "[UNK]")
_HINT = ("set tokenizer.path to a BERT tokenizer directory (save_pretrained output with "
         "tokenizer.json or vocab.txt) or to one of those files")


def _casing(directory: str) -> dict:
    """BertWordPieceTokenizer's options from tokenizer_config.json (transformers' defaults)."""
    path = os.path.join(directory, TOKENIZER_CONFIG)
    cfg = {}
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                cfg = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise TokenizerError(f"cannot read {path}: {e}") from e
    return {"lowercase": bool(cfg.get("do_lower_case", True)),
            "strip_accents": cfg.get("strip_accents"),
            "handle_chinese_chars": bool(cfg.get("tokenize_chinese_chars", True))}


def _from_vocab(path: str) -> tokenizers.Tokenizer:
    with open(path, encoding="utf-8") as f:
        vocab = {line.rstrip("\n"): i for i, line in enumerate(f)}
    missing = [t for t in SPECIAL if t not in vocab]
    if missing:
        raise TokenizerError(f"{path} has no {missing[0]} token; it is not a BERT WordPiece "
                             "vocabulary (BERT needs [CLS], [SEP], [PAD] and [UNK])")
    return BertWordPieceTokenizer(vocab, **_casing(os.path.dirname(path)))._tokenizer


def _from_json(path: str) -> tokenizers.Tokenizer:
    try:
        tok = tokenizers.Tokenizer.from_file(path)
    except Exception as e:  # the Rust side raises plain Exception subclasses
        raise TokenizerError(f"cannot parse {path} as a Hugging Face tokenizer.json: {e}") from e
    if not isinstance(tok.model, models.WordPiece):
        raise TokenizerError(f"{path} holds a {type(tok.model).__name__} tokenizer, not "
                             f"WordPiece; use tokenizer.kind='hf_json' for it")
    ids = tok.encode("", add_special_tokens=True).ids
    if ids != [tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")]:
        raise TokenizerError(f"{path} does not wrap texts in [CLS] ... [SEP] (its post-processor "
                             f"gives {ids} for an empty text); save it from BertTokenizerFast")
    return tok


def load_wordpiece(path: str) -> HFTokenizer:
    """The WordPiece tokenizer at `path` (module doc)."""
    if os.path.isdir(path):
        for name, load in ((TOKENIZER_JSON, _from_json), (VOCAB_TXT, _from_vocab)):
            if os.path.isfile(os.path.join(path, name)):
                return HFTokenizer(load(os.path.join(path, name)), source="wordpiece")
        raise TokenizerError(f"no {TOKENIZER_JSON} or {VOCAB_TXT} in {path}; {_HINT}")
    if not os.path.isfile(path):
        raise TokenizerError(f"WordPiece tokenizer not found at {path!r}; {_HINT}")
    load = _from_json if path.endswith(".json") else _from_vocab
    return HFTokenizer(load(path), source="wordpiece")
