"""Tokenizers behind one interface: CLIP BPE, tokenizer.json, SentencePiece, small trained ones."""

from vlmjax.tokenizers.base import Tokenizer, TokenizerError
from vlmjax.tokenizers.registry import KINDS, build_tokenizer, load_tokenizer

__all__ = ["KINDS", "Tokenizer", "TokenizerError", "build_tokenizer", "load_tokenizer"]
