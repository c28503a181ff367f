"""The run's tokenizer as Hugging Face CLIPTokenizer files, exported only if the ids agree.

CLIPTokenizer is a byte-level BPE over CLIP's text pipeline (NFC, whitespace, lower-case, CLIP's
split regex, `</w>` word ends, <|startoftext|> ... <|endoftext|>). vlmjax's `clip_bpe` and
`trained_bpe` kinds build exactly that pipeline, so their vocabulary and merges export as
vocab.json + merges.txt. Before the export is kept, the written files are loaded with
`transformers.CLIPTokenizer` and must give the run's ids on `PROBES`; without transformers the
tokenizer must be the very pipeline `build_clip_pipeline` makes from its vocabulary and merges.

Where the two still differ: vlmjax cleans text with ftfy and HTML unescaping first, and encodes
a literal "<|endoftext|>" in a caption as plain text; CLIPTokenizer does neither.
"""

import json
import logging
import os
from collections.abc import Sequence

import numpy as np

from vlmjax.errors import ConfigError
from vlmjax.tokenizers.base import Tokenizer, read_spec
from vlmjax.tokenizers.clip_bpe import END_OF_WORD, EOT, SOT, build_clip_pipeline

log = logging.getLogger(__name__)

VOCAB, MERGES = "vocab.json", "merges.txt"
SPECIALS = {"bos_token": SOT, "eos_token": EOT, "unk_token": EOT, "pad_token": EOT}
# Texts ftfy and HTML unescaping leave unchanged, covering letters, digits, contractions,
# punctuation runs, accents, CJK, emoji, whitespace runs, the empty string and truncation.
PROBES = (
    "a photo of a cat", "A blurry photo of a T-shirt/top.", "two dogs, on the GRASS!",
    "it's a dog, we'll see; they're HERE!!! don't I'd you've", "Numbers 1234567890, 3.14 and 1e-9",
    "Café crème brûlée à la carte, naïve façade", "東京タワーの夜景と富士山", "🙂 happy dog 🐶👍🏽",
    "  multiple   spaces\n\nand\tnewlines  ", "", "!", "URL https://example.com/a_b-c?d=1 #tag",
    "a photo of a ankle boot, a type of clothing", "supercalifragilisticexpialidocious " * 12,
)
LONG_CONTEXT = 256  # also compare untruncated encodings of the probes


def _refuse(tok_dir: str, what: str) -> ConfigError:
    return ConfigError(f"the run's tokenizer ({tok_dir}) {what}; HF CLIPTokenizer is CLIP's "
                       "byte-level BPE: only tokenizer.kind='clip_bpe' or 'trained_bpe' export")


def clip_bpe_files(tok_dir: str) -> tuple[dict[str, int], list[str]]:
    """(vocab, merge lines) of the run's tokenizer, or a ConfigError saying what is not CLIP BPE."""
    spec = read_spec(tok_dir)
    if spec["kind"] != "hf_json":
        raise _refuse(tok_dir, f"is a {spec['kind']!r} model, not a byte-level BPE")
    if not spec.get("clip_clean", False):
        raise _refuse(tok_dir, "does not apply CLIP's text clean-up (spec clip_clean is false)")
    with open(os.path.join(tok_dir, spec["file"]), encoding="utf-8") as f:
        model = json.load(f)["model"]
    if model.get("type") != "BPE" or model.get("end_of_word_suffix") != END_OF_WORD:
        raise _refuse(tok_dir, f"is a {model.get('type')} model with end_of_word_suffix "
                      f"{model.get('end_of_word_suffix')!r}, not a BPE with {END_OF_WORD!r}")
    vocab = model["vocab"]
    for token in (SOT, EOT):
        if token not in vocab:
            raise _refuse(tok_dir, f"has no {token} token")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return vocab, merges


def write_clip_bpe(vocab: dict[str, int], merges: Sequence[str], context_length: int,
                   directory: str) -> None:
    """vocab.json, merges.txt, tokenizer_config.json and special_tokens_map.json in directory."""
    with open(os.path.join(directory, VOCAB), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(directory, MERGES), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(m + "\n" for m in merges))
    for name, content in (("special_tokens_map.json", SPECIALS),
                          ("tokenizer_config.json", {"tokenizer_class": "CLIPTokenizer",
                                                     "model_max_length": context_length,
                                                     **SPECIALS})):
        with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
            json.dump(content, f, indent=2)


def first_difference(ours: Tokenizer, theirs: object, texts: Sequence[str],
                     length: int) -> str | None:
    """The first text (and both id lists) that `ours` and a transformers tokenizer encode
    differently at this context length, comparing real tokens and masks; None if all agree."""
    ids, mask = ours.encode(list(texts), length)
    ref = theirs(list(texts), padding="max_length", max_length=length, truncation=True)
    ref_ids, ref_mask = np.asarray(ref["input_ids"]), np.asarray(ref["attention_mask"]) == 1
    for i, text in enumerate(texts):
        if not np.array_equal(mask[i], ref_mask[i]) or not np.array_equal(
                ids[i][mask[i]], ref_ids[i][ref_mask[i]]):
            return (f"{text!r}: vlmjax {ids[i][mask[i]].tolist()} vs CLIPTokenizer "
                    f"{ref_ids[i][ref_mask[i]].tolist()}")
    return None


def _same_pipeline(tok_dir: str, vocab: dict[str, int], merges: Sequence[str]) -> bool:
    """Whether tokenizer.json is exactly what clip_bpe builds from this vocabulary and merges."""
    with open(os.path.join(tok_dir, read_spec(tok_dir)["file"]), encoding="utf-8") as f:
        saved = json.load(f)
    built = json.loads(build_clip_pipeline(vocab, [tuple(m.split(" ")) for m in merges]).to_str())
    keys = ("normalizer", "pre_tokenizer", "post_processor", "model", "added_tokens")
    return all(saved.get(k) == built.get(k) for k in keys)


def verify_ids(directory: str, tokenizer: Tokenizer, context_length: int, tok_dir: str) -> None:
    """Raises ConfigError unless CLIPTokenizer loaded from `directory` reproduces the run's ids."""
    try:
        from transformers import CLIPTokenizer
    except ImportError:
        vocab, merges = clip_bpe_files(tok_dir)
        if not _same_pipeline(tok_dir, vocab, merges):
            raise _refuse(tok_dir, "is not the exact CLIP BPE pipeline, and transformers is not "
                          "installed to compare ids (pip install transformers)") from None
        log.info("transformers is not installed: the tokenizer export was checked structurally")
        return
    theirs = CLIPTokenizer.from_pretrained(directory)
    for length in (context_length, LONG_CONTEXT):
        diff = first_difference(tokenizer, theirs, PROBES, length)
        if diff:
            raise _refuse(tok_dir, f"encodes differently from CLIPTokenizer at length {length}, "
                          f"e.g. {diff}")
