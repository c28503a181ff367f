"""Tokenizers: CLIP BPE parity with open_clip, trained tokenizers, truncation, save/load, errors."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import pickle
import random
import subprocess
import sys

import numpy as np
import pytest

from vlmjax.tokenizers import KINDS, Tokenizer, TokenizerError, build_tokenizer, load_tokenizer
from vlmjax.tokenizers.base import pad_batch
from vlmjax.tokenizers.clip_bpe import ClipBpeTokenizer
from vlmjax.tokenizers.sentencepiece_tokenizer import train_sentencepiece
from vlmjax.tokenizers.trained_bpe import train_bpe

OPEN_CLIP_INSTALL = "pip install --no-deps open-clip-torch==3.3.0"
SOT_ID, EOT_ID = 49406, 49407

TRICKY = [
    "A photo of a cat.",
    "Café crème brûlée à la carte, naïve façade",
    "東京タワーの夜景と富士山",
    "한국어 캡션 and 中文 mixed",
    "🙂 happy dog 🐶👍🏽 ❤️‍🔥",
    "it's a dog, we'll see; they're HERE!!! don't I'd you've",
    "Tom &amp; Jerry &lt;3 &amp;amp; &#39;quoted&#39; &quot;x&quot;",
    "  multiple   spaces\n\nand\tnewlines\r\n  ",
    "",
    "   \n\t ",
    "!",
    "The Mona Lisa doesnÃ¢â‚¬â„¢t have eyebrows.",
    "ﬁne ligatures and ＦＵＬＬ　ｗｉｄｔｈ １２３",
    "Numbers 1234567890, 3.14 and 1e-9",
    "ΣΊΣΥΦΟΣ ΟΔΥΣΣΕΥΣ İstanbul ǅemal",
    "no\u00a0break\u2028line\u200bzero\x85nel",
    "escape \x1b[31mred\x1b[0m and controls \x00\x07\x7f",
    "<|endoftext|> and <|startoftext|> are plain text here",
    "URL https://example.com/a_b-c?d=1&e=2 #tag @user",
    " ".join(["photograph"] * 40) + " ending with unicode ü 日本",
    "supercalifragilisticexpialidocious " * 30,
]
# Strings the saved tokenizer.json alone (no ftfy / HTML unescape) must encode like CLIP.
NO_FTFY_NEEDED = [TRICKY[i] for i in (0, 1, 2, 3, 5, 7, 8, 9, 10, 13, 19, 20)]
ROUND_TRIP = ["a photo of a dog", "Two  cats sitting on the GRASS", "a man riding a red bike"]

_WORD_TEXT = (
    "a an the photo picture of dog cat man woman child bike car bus tree street city beach "
    "red blue green small big two three sitting running riding standing near on in with "
    "grass water snow sky park road house window table plate food pizza"
)
WORDS = _WORD_TEXT.split()


def make_captions(n: int, seed: int) -> list[str]:
    """Synthetic caption corpus from WORDS: deterministic for a seed."""
    rng = random.Random(seed)
    caps = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 12))]
        caps.append(" ".join(words).capitalize() + rng.choice(["", ".", "!"]))
    return caps


def random_strings(n: int, seed: int) -> list[str]:
    """Fuzz strings mixing ASCII (incl. '&', controls) with accents, CJK, emoji, odd spaces."""
    rng = random.Random(seed)
    alphabet = list(
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:'\"!?&#-_()<>/|\t\n\r"
    ) + list("éüßçñÆŒİıΣς日本語中文한🙂👍🏽\u00a0\u2028\u200b\x85\x0c\x0b\x7f\x1bﬁＡ１")
    plain = [c for c in alphabet if c.isascii() and c != "&"]
    out = []
    for i in range(n):
        pool = plain if i % 2 else alphabet  # half exercise the plain-ASCII fast path
        out.append("".join(rng.choice(pool) for _ in range(rng.randint(0, 40))))
    return out


@pytest.fixture(scope="module")
def open_clip_ref():
    """open_clip's SimpleTokenizer and vocab path, loaded alone (open_clip needs torchvision)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail(f"open_clip is not installed; run `{OPEN_CLIP_INSTALL}` (and torch==2.13.0)")
    package_dir = next(iter(spec.submodule_search_locations))
    module_spec = importlib.util.spec_from_file_location(
        "open_clip_tokenizer", os.path.join(package_dir, "tokenizer.py")
    )
    module = importlib.util.module_from_spec(module_spec)
    parallelism = os.environ.get("TOKENIZERS_PARALLELISM")
    try:
        module_spec.loader.exec_module(module)  # imports ftfy, regex, numpy, torch only
    except ImportError as e:
        pytest.fail(f"cannot load open_clip's tokenizer.py ({e}); run `{OPEN_CLIP_INSTALL}`")
    finally:  # the module sets TOKENIZERS_PARALLELISM=false process-wide; undo that
        if parallelism is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = parallelism
    bpe_path = os.path.join(package_dir, "bpe_simple_vocab_16e6.txt.gz")
    return module.SimpleTokenizer(bpe_path), bpe_path


@pytest.fixture(scope="module")
def clip(open_clip_ref) -> ClipBpeTokenizer:
    return ClipBpeTokenizer.from_bpe_gz(open_clip_ref[1])


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return make_captions(3000, seed=0)


@pytest.fixture(scope="module")
def trained(corpus) -> dict[str, Tokenizer]:
    return {
        "trained_bpe": build_tokenizer("trained_bpe", vocab_size=600, texts=corpus),
        "trained_sentencepiece": build_tokenizer(
            "trained_sentencepiece", vocab_size=300, texts=corpus
        ),
    }


def eot_id(tok: Tokenizer) -> int:
    """The id each tokenizer must keep last: CLIP-style EOT or SentencePiece EOS."""
    if hasattr(tok, "sp"):
        return tok.sp.eos_id()
    return tok.token_to_id("<|endoftext|>")


def assert_matches_reference(ref, ours: Tokenizer, texts: list[str], context_length: int) -> None:
    expected = ref(texts, context_length=context_length).numpy()
    # open_clip pads with 0, which is also the id of "!": derive real lengths from encode().
    lengths = [min(len(ref.encode(t)) + 2, context_length) for t in texts]
    ids, mask = ours.encode(texts, context_length)
    assert ids.shape == mask.shape == (len(texts), context_length)
    for i, (text, n) in enumerate(zip(texts, lengths, strict=True)):
        assert mask[i].tolist() == [True] * n + [False] * (context_length - n), repr(text)
        assert ids[i, :n].tolist() == expected[i, :n].tolist(), repr(text)
        assert (ids[i, n:] == 0).all()


def test_clip_bpe_matches_open_clip_on_tricky_strings(open_clip_ref, clip):
    ref, _ = open_clip_ref
    assert clip.vocab_size == len(ref.encoder) == 49408
    assert (ref.sot_token_id, ref.eot_token_id) == (SOT_ID, EOT_ID)
    assert len(ref.encode(TRICKY[-1])) > 77  # the over-long case really is truncated
    assert_matches_reference(ref, clip, TRICKY, 77)
    assert_matches_reference(ref, clip, TRICKY, 8)


def test_clip_bpe_matches_open_clip_on_fuzz(open_clip_ref, clip):
    assert_matches_reference(open_clip_ref[0], clip, random_strings(400, seed=1), 32)


def test_clip_decode_matches_open_clip(open_clip_ref, clip):
    ref, _ = open_clip_ref
    ids, mask = clip.encode(TRICKY, 512)
    for text, row, m in zip(TRICKY, ids, mask, strict=True):
        assert clip.decode(row[m]) == ref.decode(ref.encode(text)).strip(), repr(text)


def test_clip_bpe_from_vocab_merges_matches_bpe_gz(open_clip_ref, clip, tmp_path):
    ref, _ = open_clip_ref
    renamed = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {renamed.get(token, token): i for token, i in ref.encoder.items()}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    merges = sorted(ref.bpe_ranks, key=ref.bpe_ranks.__getitem__)
    lines = ["#version: 0.2", *(" ".join(m) for m in merges)]
    (tmp_path / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")

    hf = ClipBpeTokenizer.from_vocab_merges(
        str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt")
    )
    via_dir = build_tokenizer("clip_bpe", path=str(tmp_path))
    assert hf.vocab_size == via_dir.vocab_size == clip.vocab_size
    texts = TRICKY + random_strings(100, seed=2)
    for tok in (hf, via_dir):
        for got, want in zip(tok.encode(texts, 77), clip.encode(texts, 77), strict=True):
            np.testing.assert_array_equal(got, want)


def test_pad_id_zero_is_never_used_to_infer_padding(clip):
    ids, mask = clip.encode(["!;"], 6)
    assert ids.tolist() == [[SOT_ID, 0, 282, EOT_ID, 0, 0]]  # a non-final "!" is token 0 in CLIP
    assert mask.tolist() == [[True] * 4 + [False] * 2]
    ids, mask = pad_batch([[0, 5, 0], [], [1, 2, 3, 4, 9]], 4, keep_last=True)
    assert ids.tolist() == [[0, 5, 0, 0], [0, 0, 0, 0], [1, 2, 3, 9]]
    assert mask.tolist() == [[True] * 3 + [False], [False] * 4, [True] * 4]


@pytest.mark.parametrize("kind", ["clip_bpe", "trained_bpe", "trained_sentencepiece"])
def test_round_trip_plain_sentences(kind, clip, trained):
    tok = clip if kind == "clip_bpe" else trained[kind]
    ids, mask = tok.encode(ROUND_TRIP, 32)
    for text, row, m in zip(ROUND_TRIP, ids, mask, strict=True):
        assert tok.decode(row[m]) == " ".join(text.lower().split())


@pytest.mark.parametrize("kind", ["clip_bpe", "trained_bpe", "trained_sentencepiece"])
def test_truncation_keeps_end_token_and_shapes(kind, clip, trained, corpus):
    tok = clip if kind == "clip_bpe" else trained[kind]
    texts = [" ".join(corpus[:20]), corpus[0], ""]
    ids, mask = tok.encode(texts, 12)
    assert ids.dtype == np.int32 and mask.dtype == np.bool_
    assert ids.shape == mask.shape == (3, 12)
    assert mask[0].all()  # the long text fills the context ...
    lengths = mask.sum(axis=1)
    assert (ids[np.arange(3), lengths - 1] == eot_id(tok)).all()  # ... and every row ends in EOT
    assert (ids[~mask] == 0).all()
    assert ((ids >= 0) & (ids < tok.vocab_size)).all()
    untruncated, _ = tok.encode(texts[:1], 200)
    assert ids[0, :11].tolist() == untruncated[0, :11].tolist()
    assert tok.encode([], 12)[0].shape == (0, 12)
    for bad in (1, 0, -3):
        with pytest.raises(TokenizerError, match="context_length"):
            tok.encode(["a dog"], bad)
    with pytest.raises(TokenizerError, match="wrap it in a list"):
        tok.encode("a dog", 12)


def test_clip_context_length_two_is_just_sot_eot(clip):
    assert clip.encode(["a long caption about a dog"], 2)[0].tolist() == [[SOT_ID, EOT_ID]]


def test_save_load_round_trip_every_kind(open_clip_ref, clip, trained, corpus, tmp_path):
    sp_dir = tmp_path / "sp_source"
    train_sentencepiece(corpus, 250, directory=str(sp_dir))
    clip.save(str(tmp_path / "clip_saved"))
    wordpiece = tmp_path / "wordpiece_source"  # BERT's special tokens, characters, two words
    wordpiece.mkdir()
    (wordpiece / "vocab.txt").write_text("\n".join(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz0123456789",
         "photo", "##s"]) + "\n", encoding="utf-8")
    built = {
        "clip_bpe": clip,
        "hf_json": build_tokenizer("hf_json", path=str(tmp_path / "clip_saved" / "tokenizer.json")),
        "sentencepiece": build_tokenizer("sentencepiece", path=str(sp_dir / "sentencepiece.model")),
        "wordpiece": build_tokenizer("wordpiece", path=str(wordpiece)),
        **trained,
    }
    assert sorted(built) == sorted(KINDS)
    texts = TRICKY + corpus[:50]
    for kind, tok in built.items():
        tok.save(str(tmp_path / kind))
        spec = json.loads((tmp_path / kind / "tokenizer_spec.json").read_text())
        assert "kind" in spec
        loaded = load_tokenizer(str(tmp_path / kind))
        unpickled = pickle.loads(pickle.dumps(tok))  # as sent to data-loader worker processes
        for other in (loaded, unpickled):
            assert other.vocab_size == tok.vocab_size, kind
            for got, want in zip(other.encode(texts, 40), tok.encode(texts, 40), strict=True):
                np.testing.assert_array_equal(got, want, err_msg=kind)
        ids, mask = tok.encode(corpus[:3], 40)
        assert [loaded.decode(r[m]) for r, m in zip(ids, mask, strict=True)] == [
            tok.decode(r[m]) for r, m in zip(ids, mask, strict=True)
        ]
    # The bare tokenizer.json (no ftfy step) still lower-cases, splits and wraps like CLIP.
    for got, want in zip(
        built["hf_json"].encode(NO_FTFY_NEEDED, 77), clip.encode(NO_FTFY_NEEDED, 77), strict=True
    ):
        np.testing.assert_array_equal(got, want)


def _merges_digest(tok: Tokenizer) -> str:
    return hashlib.sha256(tok.hf_tokenizer.to_str().encode()).hexdigest()


def test_trained_bpe_is_deterministic_across_processes(corpus, trained):
    again = train_bpe(corpus, 600)
    assert _merges_digest(again) == _merges_digest(trained["trained_bpe"])
    # Rust hash maps are seeded per process, so only a fresh process shows order dependence.
    code = (
        "import hashlib, json, sys\n"
        "from vlmjax.tokenizers.trained_bpe import train_bpe\n"
        "tok = train_bpe(json.load(sys.stdin), 600)\n"
        "print(hashlib.sha256(tok.hf_tokenizer.to_str().encode()).hexdigest())\n"
    )
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # The demo's caption corpus has many equally frequent pairs: a trainer that breaks ties by
    # hash order gives different tokenizers in different processes (seen with BpeTrainer).
    from vlmjax.data.captions import caption_texts
    from vlmjax.data.datasets import caption_vocabulary
    captions = caption_texts(*caption_vocabulary("fashion_mnist"))[0]
    for texts in (corpus, captions, captions, captions):
        out = subprocess.run(
            [sys.executable, "-c", code],
            input=json.dumps(texts),
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
            cwd=repo,
        )
        assert out.stdout.strip() == _merges_digest(train_bpe(texts, 600))


def test_trained_bpe_merges_most_frequent_pair_first_ties_by_pair():
    from vlmjax.tokenizers.trained_bpe import _train_merges
    # "ab" x3, "ac" x2 -> (a, b</w>) first; then "xy"/"xz" tie at 1 and are taken in pair order.
    merges = _train_merges(["ab ab ab ac ac xz xy"], 4)
    assert merges == [("a", "b</w>"), ("a", "c</w>"), ("x", "y</w>"), ("x", "z</w>")]


def test_trained_sentencepiece_is_deterministic(corpus, trained):
    a, _ = trained["trained_sentencepiece"].encode(corpus, 32)
    b, _ = train_sentencepiece(corpus, 300).encode(corpus, 32)
    np.testing.assert_array_equal(a, b)


def test_trained_bpe_respects_vocab_size(corpus, trained):
    tok = trained["trained_bpe"]
    assert tok.vocab_size == 600
    ids, mask = tok.encode(corpus, 64)
    assert ids[mask].max() < 600
    assert eot_id(tok) == 599 and tok.token_to_id("<|startoftext|>") == 598
    # A tiny corpus supports few merges: the vocabulary may be smaller, never larger.
    small = train_bpe(["a dog", "a cat"], 5000)
    assert 514 < small.vocab_size < 5000
    with pytest.raises(TokenizerError, match="vocab_size"):
        train_bpe(corpus, 514)


def test_trained_bpe_encodes_unseen_bytes_without_loss(trained):
    tok = trained["trained_bpe"]
    text = "zebra ünïcödé 日本 🙂 ~^"
    ids, mask = tok.encode([text], 77)
    assert tok.decode(ids[0][mask[0]]) == "zebra ünïcödé 日本 🙂 ~^"


def test_unknown_kind_lists_valid_kinds():
    with pytest.raises(TokenizerError) as err:
        build_tokenizer("unigram")
    message = str(err.value)
    assert "unigram" in message and "tokenizer.kind" in message
    assert all(kind in message for kind in KINDS)
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize(
    ("kind", "name"),
    [("clip_bpe", "vocab.txt.gz"), ("hf_json", "tokenizer.json"), ("sentencepiece", "spm.model")],
)
def test_missing_file_names_path_and_config_key(kind, name, tmp_path):
    path = str(tmp_path / "nowhere" / name)
    with pytest.raises(TokenizerError) as err:
        build_tokenizer(kind, path=path)
    assert path in str(err.value) and "tokenizer.path" in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_clip_directory_files_and_training_inputs(tmp_path):
    with pytest.raises(TokenizerError, match="vocab.json"):
        build_tokenizer("clip_bpe", path=str(tmp_path))
    with pytest.raises(TokenizerError, match="no texts"):
        build_tokenizer("trained_bpe", vocab_size=1000)
    with pytest.raises(TokenizerError, match="vocab_size"):
        build_tokenizer("trained_sentencepiece", texts=["a dog"])
    with pytest.raises(TokenizerError, match="tokenizer_spec.json"):
        load_tokenizer(str(tmp_path))
