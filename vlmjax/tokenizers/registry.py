"""The tokenizer-kind registry (`config.tokenizer.kind`): build one from config (a path or
texts to train on), check its keys, and reload one saved with Tokenizer.save."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterable, Mapping

from vlmjax.errors import ConfigError
from vlmjax.registry import Registry
from vlmjax.tokenizers.base import Tokenizer, TokenizerError, read_spec, require_file
from vlmjax.tokenizers.clip_bpe import ClipBpeTokenizer
from vlmjax.tokenizers.hf_tokenizer import HFTokenizer
from vlmjax.tokenizers.sentencepiece_tokenizer import SentencePieceTokenizer, train_sentencepiece
from vlmjax.tokenizers.trained_bpe import train_bpe
from vlmjax.tokenizers.wordpiece import load_wordpiece

logger = logging.getLogger(__name__)

# Keys of the `tokenizer` section.
TOKENIZER_OPTIONS = {
    "kind": "trained_bpe",  # clip_bpe | hf_json | sentencepiece | wordpiece | trained_bpe |
    # trained_sentencepiece
    "path": "",  # the vocabulary file or directory of the file-based kinds
    "vocab_size": 1024,  # trained kinds: the vocabulary they learn
    "context_length": 16,
}


@dataclasses.dataclass(frozen=True)
class TokenizerKind:
    """A registered tokenizer kind: loaded from `tokenizer.path`, or trained on captions."""

    build: Callable[[str, int, Iterable[str] | None], Tokenizer]  # (path, vocab_size, texts)
    trains: bool = False  # learns its vocabulary from the training source's captions
    path_optional: bool = False  # an empty path has a meaning (clip_bpe: open_clip's bundled file)


def _trained(train: Callable[[Iterable[str], int], Tokenizer], kind: str
             ) -> Callable[[str, int, Iterable[str] | None], Tokenizer]:
    def build(path: str, vocab_size: int, texts: Iterable[str] | None) -> Tokenizer:
        del path
        if texts is None:
            raise TokenizerError(f"tokenizer kind {kind!r} trains on captions but no texts were given")
        if vocab_size <= 0:
            raise TokenizerError(f"tokenizer kind {kind!r} needs tokenizer.vocab_size > 0, got {vocab_size}")
        return train(texts, vocab_size)
    return build


TOKENIZERS: Registry[TokenizerKind] = Registry("tokenizer.kind", {
    "clip_bpe": TokenizerKind(lambda path, *_: ClipBpeTokenizer.from_path(path), path_optional=True),
    "hf_json": TokenizerKind(lambda path, *_: HFTokenizer.from_file(path)),
    "sentencepiece": TokenizerKind(lambda path, *_: SentencePieceTokenizer(path)),
    "wordpiece": TokenizerKind(lambda path, *_: load_wordpiece(path)),
    "trained_bpe": TokenizerKind(_trained(train_bpe, "trained_bpe"), trains=True),
    "trained_sentencepiece": TokenizerKind(_trained(train_sentencepiece, "trained_sentencepiece"),
                                           trains=True),
})
KINDS = tuple(TOKENIZERS)


def build_tokenizer(kind: str, path: str = "", vocab_size: int = 0,
                    texts: Iterable[str] | None = None) -> Tokenizer:
    """The tokenizer `kind`: loaded from `path` or trained on `texts` (module doc)."""
    if kind not in TOKENIZERS:
        raise TokenizerError(f"unknown tokenizer kind {kind!r}; set tokenizer.kind to one of: "
                             f"{', '.join(KINDS)}")
    logger.info("building %s tokenizer (path=%r, vocab_size=%d)", kind, path, vocab_size)
    return TOKENIZERS[kind].build(path, vocab_size, texts)


def check_tokenizer(cfg: Mapping) -> None:
    """ConfigError when `config.tokenizer` cannot give a tokenizer: unknown kind, a missing
    vocabulary file, no vocabulary size to train, a context shorter than 2."""
    tok = cfg["tokenizer"]
    kind = TOKENIZERS.get_or_fail(tok["kind"])
    if tok["context_length"] < 2:
        raise ConfigError(f"config.tokenizer.context_length={tok['context_length']} must be at "
                          "least 2; CLIP uses 77")
    if kind.trains:
        if tok["vocab_size"] <= 0:
            raise ConfigError(f"config.tokenizer.vocab_size={tok['vocab_size']} must be positive "
                              f"for tokenizer.kind={tok['kind']!r}; e.g. 1024")
    elif (tok["path"] or not kind.path_optional) and not os.path.exists(tok["path"]):
        raise ConfigError(f"config.tokenizer.path ({tok['path']!r}) does not exist but "
                          f"tokenizer.kind={tok['kind']!r} reads its vocabulary from it; point "
                          "it at the tokenizer files")


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
