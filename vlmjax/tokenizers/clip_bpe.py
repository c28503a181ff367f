"""OpenAI CLIP's byte-level BPE tokenizer, built with Hugging Face `tokenizers` from its merges."""

from __future__ import annotations

import functools
import gzip
import importlib.util
import json
import logging
import os
from collections.abc import Sequence

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors

from vlmjax.tokenizers.base import TokenizerError, require_file
from vlmjax.tokenizers.hf_tokenizer import HFTokenizer

logger = logging.getLogger(__name__)

SOT = "<|startoftext|>"
EOT = "<|endoftext|>"
END_OF_WORD = "</w>"
# open_clip's pattern without its special-token alternatives: special tokens are never
# recognised inside captions (they are added by the post-processor only).
CLIP_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
CLIP_NUM_MERGES = 49152 - 256 - 2  # merges = lines [1 : 49152-256-2+1] of the .gz file
BPE_GZ_NAME = "bpe_simple_vocab_16e6.txt.gz"
_PATH_HINT = (
    f"set tokenizer.path to open_clip's {BPE_GZ_NAME} "
    "or to a directory holding vocab.json and merges.txt"
)

Merges = Sequence[tuple[str, str]]


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP map from each byte to a printable unicode char, in CLIP's vocabulary order."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def default_bpe_path() -> str:
    """Path of the vocab bundled with an installed open_clip (found without importing it), or ""."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return ""
    path = os.path.join(list(spec.submodule_search_locations)[0], BPE_GZ_NAME)
    return path if os.path.isfile(path) else ""


def read_bpe_gz_merges(path: str, num_merges: int = CLIP_NUM_MERGES) -> list[tuple[str, str]]:
    """Read the first num_merges merges of bpe_simple_vocab_16e6.txt.gz (after its header)."""
    require_file(path, "CLIP BPE vocabulary", _PATH_HINT)
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")[1 : num_merges + 1]
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise TokenizerError(
            f"cannot read {path} as a gzipped CLIP merges file: {e}; {_PATH_HINT}"
        ) from e
    pairs = [line.split() for line in lines]
    if len(pairs) != num_merges or any(len(p) != 2 for p in pairs):
        raise TokenizerError(f"{path} does not hold {num_merges} 'a b' merge lines; {_PATH_HINT}")
    return [(p[0], p[1]) for p in pairs]


def clip_vocab(merges: Merges) -> dict[str, int]:
    """CLIP's vocabulary layout: 256 byte chars, the same with </w>, merged tokens, SOT, EOT."""
    symbols = list(bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for token in [
        *symbols,
        *(s + END_OF_WORD for s in symbols),
        *("".join(m) for m in merges),
        SOT,
        EOT,
    ]:
        vocab.setdefault(token, len(vocab))
    return vocab


def set_clip_text_pipeline(tok: tokenizers.Tokenizer) -> None:
    """Give tok CLIP's normaliser, regex + byte-level pre-tokeniser and </w>-aware decoder."""
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    # "</w>" becomes the byte-level symbol for a space, so ByteLevel decoding yields word breaks.
    space = bytes_to_unicode()[ord(" ")]
    tok.decoder = decoders.Sequence([decoders.Replace(END_OF_WORD, space), decoders.ByteLevel()])


def build_clip_pipeline(vocab: dict[str, int], merges: Merges) -> tokenizers.Tokenizer:
    """Assemble a CLIP tokenizer: BPE(</w>) over the CLIP text pipeline, wrapped as SOT ... EOT."""
    for token in (SOT, EOT):
        if token not in vocab:
            raise TokenizerError(f"the CLIP vocabulary has no {token!r} token; {_PATH_HINT}")
    tok = tokenizers.Tokenizer(
        models.BPE(vocab=vocab, merges=list(merges), end_of_word_suffix=END_OF_WORD, fuse_unk=False)
    )
    set_clip_text_pipeline(tok)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (SOT, EOT)])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{SOT} $A {EOT}", special_tokens=[(SOT, vocab[SOT]), (EOT, vocab[EOT])]
    )
    return tok


class ClipBpeTokenizer(HFTokenizer):
    """CLIP BPE: lower-cased, ftfy-cleaned, SOT ... EOT with EOT kept last; use the classmethods."""

    @classmethod
    def from_merges(cls, merges: Merges, source: str = "clip_bpe") -> ClipBpeTokenizer:
        """Build a CLIP-style tokenizer from an ordered merge list (the vocabulary follows)."""
        return cls(build_clip_pipeline(clip_vocab(merges), merges), clip_clean=True, source=source)

    @classmethod
    def from_bpe_gz(cls, path: str = "") -> ClipBpeTokenizer:
        """Load open_clip's bpe_simple_vocab_16e6.txt.gz ("" = the copy bundled with open_clip)."""
        path = path or default_bpe_path()
        if not path:
            raise TokenizerError(
                "no CLIP BPE vocabulary given (tokenizer.path is empty) and open_clip "
                f"is not installed; {_PATH_HINT}"
            )
        tok = cls.from_merges(read_bpe_gz_merges(path))
        logger.info("loaded CLIP BPE from %s (vocab %d)", path, tok.vocab_size)
        return tok

    @classmethod
    def from_vocab_merges(cls, vocab_json: str, merges_txt: str) -> ClipBpeTokenizer:
        """Load the Hugging Face CLIP format: vocab.json + merges.txt ("#version" line skipped)."""
        require_file(vocab_json, "CLIP vocab.json", _PATH_HINT)
        require_file(merges_txt, "CLIP merges.txt", _PATH_HINT)
        try:
            with open(vocab_json, encoding="utf-8") as f:
                vocab = json.load(f)
            with open(merges_txt, encoding="utf-8") as f:
                lines = [line.split() for line in f.read().split("\n")]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise TokenizerError(
                f"cannot read {vocab_json} / {merges_txt}: {e}; {_PATH_HINT}"
            ) from e
        merges = [(m[0], m[1]) for m in lines if len(m) == 2 and not m[0].startswith("#version")]
        tok = cls(build_clip_pipeline(vocab, merges), clip_clean=True, source="clip_bpe")
        logger.info("loaded CLIP BPE from %s (vocab %d)", vocab_json, tok.vocab_size)
        return tok

    @classmethod
    def from_path(cls, path: str) -> ClipBpeTokenizer:
        """Load a .txt.gz merges file, or a directory with vocab.json + merges.txt."""
        if path and os.path.isdir(path):
            return cls.from_vocab_merges(
                os.path.join(path, "vocab.json"), os.path.join(path, "merges.txt")
            )
        return cls.from_bpe_gz(path)
