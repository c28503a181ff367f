"""A Tokenizer backed by a SentencePiece model (e.g. SigLIP/T5 style), and in-memory SP training."""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterable, Sequence

import numpy as np
import sentencepiece as spm

from vlmjax.tokenizers.base import (
    Tokenizer,
    TokenizerError,
    check_context_length,
    check_texts,
    pad_batch,
    require_file,
    write_spec,
)

logger = logging.getLogger(__name__)

MODEL_FILE = "sentencepiece.model"
# A-Z -> a-z only: TensorFlow's tf.strings.lower without an encoding (big_vision's `tokenize`
# op, lower=True) lowers ASCII bytes and leaves every other character as it is.
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


class SentencePieceTokenizer(Tokenizer):
    """SentencePiece encoding with optional BOS/EOS; EOS stays the last real token on truncation.

    `ascii_lower` lowercases A-Z before encoding and `pad_id` fills the padding positions (the
    mask still marks them): big_vision SigLIP's `tokenize(eos="sticky", pad_value=1)` is
    add_eos=True, ascii_lower=True, pad_id=1.
    """

    def __init__(self, model_file: str, add_bos: bool = False, add_eos: bool = True,
                 ascii_lower: bool = False, pad_id: int = 0) -> None:
        """Load a .model file; add_bos/add_eos wrap every text in the model's BOS/EOS ids."""
        require_file(
            model_file, "SentencePiece model", "set tokenizer.path to a SentencePiece .model file"
        )
        with open(model_file, "rb") as f:
            self._init(f.read(), add_bos, add_eos, origin=model_file)
        self._set_padding(ascii_lower, pad_id, model_file)

    @classmethod
    def from_proto(
        cls, model_proto: bytes, add_bos: bool = False, add_eos: bool = True
    ) -> SentencePieceTokenizer:
        """Build from serialized model bytes (as written by SentencePieceTrainer's model_writer)."""
        self = cls.__new__(cls)
        self._init(model_proto, add_bos, add_eos, origin="<in-memory model>")
        self._set_padding(False, 0, "<in-memory model>")
        return self

    def _set_padding(self, ascii_lower: bool, pad_id: int, origin: str) -> None:
        if not 0 <= int(pad_id) < self.vocab_size:
            raise TokenizerError(f"pad_id {pad_id} is not an id of SentencePiece model {origin} "
                                 f"({self.vocab_size} pieces); use an id below {self.vocab_size}")
        self.ascii_lower = bool(ascii_lower)
        self.pad_id = int(pad_id)

    def _init(self, model_proto: bytes, add_bos: bool, add_eos: bool, origin: str) -> None:
        """Parse the model and check that the requested BOS/EOS tokens exist."""
        self._proto = bytes(model_proto)
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(self._proto)
        except (RuntimeError, OSError) as e:
            raise TokenizerError(f"cannot load SentencePiece model {origin}: {e}") from e
        for wanted, token_id, name in (
            (add_bos, self._sp.bos_id(), "BOS"),
            (add_eos, self._sp.eos_id(), "EOS"),
        ):
            if wanted and token_id < 0:
                raise TokenizerError(
                    f"SentencePiece model {origin} has no {name} token; "
                    f"pass add_{name.lower()}=False or use a model trained with one"
                )
        self.add_bos = bool(add_bos)
        self.add_eos = bool(add_eos)

    @property
    def vocab_size(self) -> int:
        """Number of pieces in the model."""
        return self._sp.get_piece_size()

    @property
    def sp(self) -> spm.SentencePieceProcessor:
        """The wrapped processor, for callers that need its full API."""
        return self._sp

    def encode(self, texts: Sequence[str], context_length: int) -> tuple[np.ndarray, np.ndarray]:
        """Encode a batch (multi-threaded in C++) and pad; EOS (if added) survives truncation."""
        texts = check_texts(texts)
        check_context_length(context_length, minimum=1 + int(self.add_bos) + int(self.add_eos))
        if self.ascii_lower:
            texts = [t.translate(_ASCII_LOWER) for t in texts]
        seqs = (
            self._sp.encode(texts, out_type=int, add_bos=self.add_bos, add_eos=self.add_eos)
            if texts
            else []
        )
        ids, mask = pad_batch(seqs, context_length, keep_last=self.add_eos)
        if self.pad_id:
            ids[~mask] = self.pad_id
        return ids, mask

    def decode(self, ids: Sequence[int]) -> str:
        """Decode ids to text; BOS/EOS/PAD control pieces are dropped by SentencePiece."""
        return self._sp.decode([int(i) for i in ids]).strip()

    def save(self, directory: str) -> None:
        """Write sentencepiece.model and tokenizer_spec.json into directory."""
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, MODEL_FILE), "wb") as f:
            f.write(self._proto)
        write_spec(
            directory,
            {
                "kind": "sentencepiece",
                "file": MODEL_FILE,
                "add_bos": self.add_bos,
                "add_eos": self.add_eos,
                "ascii_lower": self.ascii_lower,
                "pad_id": self.pad_id,
            },
        )
        logger.info("saved SentencePiece tokenizer (vocab %d) to %s", self.vocab_size, directory)


def train_sentencepiece(
    texts: Iterable[str], vocab_size: int, directory: str | None = None
) -> SentencePieceTokenizer:
    """Train a case-folded unigram SentencePiece model in memory, deterministically.

    Ids: 0 pad, 1 unk, 2 bos, 3 eos. vocab_size is an upper bound: a small corpus may yield
    fewer pieces. If directory is given the tokenizer is also saved there.
    """
    if vocab_size < 8:
        raise TokenizerError(
            f"trained_sentencepiece needs vocab_size >= 8, got {vocab_size}; "
            "set tokenizer.vocab_size, e.g. 4096"
        )
    sentences = (" ".join(t.split()) for t in texts)
    writer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=(s for s in sentences if s),
            model_writer=writer,
            vocab_size=int(vocab_size),
            hard_vocab_limit=False,
            model_type="unigram",
            normalization_rule_name="nmt_nfkc_cf",
            pad_id=0,
            unk_id=1,
            bos_id=2,
            eos_id=3,
            num_threads=1,  # multi-threaded training is not deterministic
            minloglevel=2,
        )
    except RuntimeError as e:
        raise TokenizerError(
            f"SentencePiece training failed: {e}; check the captions and tokenizer.vocab_size"
        ) from e
    tok = SentencePieceTokenizer.from_proto(writer.getvalue())
    logger.info(
        "trained SentencePiece tokenizer: vocab %d (requested %d)", tok.vocab_size, vocab_size
    )
    if directory:
        tok.save(directory)
    return tok
