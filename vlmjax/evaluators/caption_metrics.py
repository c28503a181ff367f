"""Captioning metrics BLEU-4 and CIDEr-D, computed as the COCO caption evaluation (coco-caption) does.

Own implementation rather than a dependency on `pycocoevalcap`: its wheel is ~105 MB (METEOR/SPICE jars and
data), pulls in `pycocotools`, and its tokenizer needs Java; the two scorers are short. The numbers follow
coco-caption's `bleu_scorer.py` (corpus BLEU, "closest" reference length) and `cider_scorer.py` (CIDEr-D)
including their quirks, so scores are comparable with published COCO numbers; tests cross-check them.

Tokenisation differs from coco-caption's Java PTBTokenizer (Stanford CoreNLP 3.4.1, `-lowerCase`, punctuation
tokens dropped): `tokenize_caption` is a regex approximation that gives the same tokens for plain English
captions (lower-casing, splitting off clitics such as "'s" and "n't", dropping . , ; : ! ? quotes and dashes,
and coco-caption's quirk of keeping brackets as "-lrb-" etc.). It may differ on rare constructs PTB handles
with lexicons or special rules (URLs, emoticons, uncommon abbreviations, fractions, unusual symbols).
"""

import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

MAX_N = 4
CIDER_SIGMA = 6.0
# coco-caption's bleu_scorer smoothing: a zero n-gram match count gives a tiny, not a zero, precision.
_BLEU_TINY = 1e-15
_BLEU_SMALL = 1e-9

# Tokens coco-caption's PTBTokenizer wrapper drops (its PUNCTUATIONS list, as raw characters here). Its
# list has upper-case "-LRB-" etc. but the tokenizer runs with -lowerCase, so brackets survive as "-lrb-".
_DROPPED = frozenset(["''", "'", "``", "`", '"', ".", "?", "!", ",", ":", "-", "--", "...", ";"])
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})
_NEGATION_RE = re.compile(r"(?<=\w)n't(?!\w)")
_CLITIC_RE = re.compile(r"(?<=\w)'(s|re|ve|ll|d|m)(?!\w)")
_TOKEN_RE = re.compile(
    r"n't|'(?:s|re|ve|ll|d|m)(?!\w)"  # clitics, split off as PTB does ("don't" -> "do n't")
    r"|[^\W\d_](?:\.[^\W\d_])+\.?"  # abbreviations kept whole: "u.s.", "p.m."
    r"|(?:mr|mrs|ms|dr|st|jr|sr|mt|vs|etc)\.(?!\w)"  # common abbreviations PTB keeps with their period
    r"|\d+(?:[.,:]\d+)+(?!\w)"  # numbers with separators kept whole: "3.5", "1,000", "10:30"
    r"|\w+(?:[-']\w+)*"  # words, with internal hyphens/apostrophes: "t-shirt", "o'clock"
    r"|\.\.\.|--|``|''|[!?]+"  # a run such as "!!" is one token, which PTB (and so COCO) keeps
    r"|[^\s\w]"  # any other symbol is a token of its own
)


def tokenize_caption(text: str) -> list[str]:
    """Lower-cased tokens of a caption without punctuation, approximating coco-caption's PTB tokenizer."""
    text = text.lower().translate(_QUOTES)
    text = _CLITIC_RE.sub(r" '\1", _NEGATION_RE.sub(" n't", text))
    return [_BRACKETS.get(tok, tok) for tok in _TOKEN_RE.findall(text) if tok not in _DROPPED]


def _ngram_counts(tokens: Sequence[str], max_n: int = MAX_N) -> Counter:
    """Counts of all 1..max_n-grams (as tuples) of one token sequence."""
    return Counter(tuple(tokens[i : i + k]) for k in range(1, max_n + 1) for i in range(len(tokens) - k + 1))


def _check(candidates: Sequence, references: Sequence[Sequence]) -> None:
    """Raise on empty input, mismatched lengths or an image without references."""
    if isinstance(candidates, str) or len(candidates) == 0:
        raise ValueError("candidates must be a non-empty sequence of captions")
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} reference lists")
    for i, refs in enumerate(references):
        if isinstance(refs, str) or len(refs) == 0:
            raise ValueError(f"image {i}: references must be a non-empty sequence of captions")


def _bleu4_tokens(cands: Sequence[list[str]], refs: Sequence[Sequence[list[str]]]) -> float:
    """Corpus BLEU-4 of tokenised captions, as coco-caption's BleuScorer with option "closest"."""
    correct = [0] * MAX_N
    guess = [0] * MAX_N
    cand_len = ref_len = 0
    for cand, cand_refs in zip(cands, refs, strict=True):
        max_ref = Counter()
        for ref in cand_refs:
            max_ref |= _ngram_counts(ref)  # union keeps the maximum count over references
        for ngram, count in _ngram_counts(cand).items():
            correct[len(ngram) - 1] += min(count, max_ref[ngram])
        n = len(cand)
        for k in range(MAX_N):
            guess[k] += max(0, n - k)
        cand_len += n
        ref_len += min((abs(len(r) - n), len(r)) for r in cand_refs)[1]  # closest length, ties -> shorter
    precision = math.prod((c + _BLEU_TINY) / (g + _BLEU_SMALL) for c, g in zip(correct, guess, strict=True))
    score = precision ** (1.0 / MAX_N)
    ratio = (cand_len + _BLEU_TINY) / (ref_len + _BLEU_SMALL)
    if ratio < 1:
        score *= math.exp(1 - 1 / ratio)
    return float(score)


def _tfidf(counts: Counter, doc_freq: Counter, log_num_docs: float) -> tuple[list[dict], np.ndarray, int]:
    """Per-order tf-idf vectors, their norms, and the bigram count coco-caption uses as the length."""
    vecs: list[dict] = [{} for _ in range(MAX_N)]
    for ngram, tf in counts.items():
        vecs[len(ngram) - 1][ngram] = tf * (log_num_docs - math.log(max(1.0, doc_freq[ngram])))
    norms = np.array([math.sqrt(sum(v * v for v in vec.values())) for vec in vecs])
    length = sum(tf for ngram, tf in counts.items() if len(ngram) == 2)
    return vecs, norms, length


def _cider_d_tokens(cands: Sequence[list[str]], refs: Sequence[Sequence[list[str]]]) -> float:
    """Mean CIDEr-D of tokenised captions, as coco-caption's CiderScorer (n=4, sigma=6, x10)."""
    ref_counts = [[_ngram_counts(r) for r in cand_refs] for cand_refs in refs]
    doc_freq: Counter = Counter()  # number of images whose references contain the n-gram
    for counts in ref_counts:
        doc_freq.update(set().union(*counts))
    log_num_docs = math.log(len(refs))
    scores = []
    for cand, counts_refs in zip(cands, ref_counts, strict=True):
        vec, norm, length = _tfidf(_ngram_counts(cand), doc_freq, log_num_docs)
        total = np.zeros(MAX_N)
        for counts in counts_refs:
            vec_r, norm_r, length_r = _tfidf(counts, doc_freq, log_num_docs)
            # Clipped dot product: a candidate n-gram cannot earn more weight than the reference gives it.
            sim = np.array(
                [
                    sum(min(w, vec_r[k].get(g, 0.0)) * vec_r[k].get(g, 0.0) for g, w in vec[k].items())
                    for k in range(MAX_N)
                ]
            )
            nonzero = (norm != 0) & (norm_r != 0)
            sim[nonzero] /= norm[nonzero] * norm_r[nonzero]
            total += sim * math.exp(-((length - length_r) ** 2) / (2 * CIDER_SIGMA**2))
        scores.append(10.0 * total.mean() / len(counts_refs))
    return float(np.mean(scores))


def bleu4(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU-4 in [0, 1] of one candidate per image against that image's references."""
    _check(candidates, references)
    return _bleu4_tokens(
        [tokenize_caption(c) for c in candidates],
        [[tokenize_caption(r) for r in refs] for refs in references],
    )


def cider_d(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean CIDEr-D (0..10 per image) with idf from the references of this evaluated set, as on COCO.

    With a single image every n-gram has idf log(1) = 0, so the score is 0: evaluate a whole split at once.
    As in coco-caption, the length penalty compares bigram counts, and n-gram orders a caption is too short
    to have contribute 0 (a 2-word caption identical to its reference scores 5, not 10).
    """
    _check(candidates, references)
    return _cider_d_tokens(
        [tokenize_caption(c) for c in candidates],
        [[tokenize_caption(r) for r in refs] for refs in references],
    )


def caption_metrics(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """{"bleu4", "cider_d"} of the candidates, tokenising every caption once."""
    _check(candidates, references)
    cands = [tokenize_caption(c) for c in candidates]
    refs = [[tokenize_caption(r) for r in rs] for rs in references]
    return {"bleu4": _bleu4_tokens(cands, refs), "cider_d": _cider_d_tokens(cands, refs)}
