"""BLEU-4 / CIDEr-D against hand-computed values and coco-caption's documented behaviour."""

import math

import pytest

from vlmjax.evaluators import caption_metrics as cm
from vlmjax.evaluators.caption_metrics import bleu4, caption_metrics, cider_d, tokenize_caption

# Expected tokens: output of coco-caption's PTBTokenizer (Stanford CoreNLP 3.4.1, via pycocoevalcap 1.2).
PTB_CASES = [
    ("A man, riding a horse.", "a man riding a horse"),
    ("The dog's ball isn't red!", "the dog 's ball is n't red"),
    ("Can't won't they're we've I'm he'd", "ca n't wo n't they 're we 've i 'm he 'd"),
    ("A man in a 'Star Wars' t-shirt.", "a man in a star wars t-shirt"),
    ("Kids play at the U.S. beach; mom's watching?", "kids play at the u.s. beach mom 's watching"),
    ("people's bikes and a $5 bill, 50% off", "people 's bikes and a $ 5 bill 50 % off"),
    ("It's 10:30 -- o'clock; 3.5 cats", "it 's 10:30 o'clock 3.5 cats"),
    ("an old-fashioned (vintage) clock", "an old-fashioned -lrb- vintage -rrb- clock"),
    ("The   TRAIN... arrives!!", "the train arrives !!"),
    ("a giraffe standing next to a tree .", "a giraffe standing next to a tree"),
]


@pytest.mark.parametrize(("text", "expected"), PTB_CASES)
def test_tokenize_matches_coco_ptb(text: str, expected: str) -> None:
    assert tokenize_caption(text) == expected.split()


def test_bleu4_identical_is_one() -> None:
    assert bleu4(
        ["A man riding a horse on the beach."], [["a man riding a horse on the beach"]]
    ) == pytest.approx(1)


def test_bleu4_two_sentence_corpus_by_hand() -> None:
    cands = ["a cat sits on the mat", "a dog runs in the park"]
    refs = [["a cat is sitting on the mat", "there is a cat on the mat"], ["a brown dog runs in the park"]]
    # Clipped matches / candidate n-grams, image 1 + image 2:
    #   1-grams: a cat on the mat (5/6)                       + all (6/6)
    #   2-grams: "a cat" "on the" "the mat" (3/5)              + all but "a dog" (4/5)
    #   3-grams: "on the mat" (1/4)                            + all but "a dog runs" (3/4)
    #   4-grams: none (0/3)                                    + "dog runs in the" "runs in the park" (2/3)
    precision = (11 / 12) * (7 / 10) * (4 / 8) * (2 / 6)
    # Corpus lengths: candidates 6 + 6, closest references 7 + 7 -> brevity penalty exp(1 - 14/12).
    expected = math.exp(1 - 14 / 12) * precision**0.25
    assert bleu4(cands, refs) == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.48407, abs=1e-5)


def test_bleu4_closest_reference_length_breaks_ties_to_shorter() -> None:
    # Candidate length 5, references of lengths 4 and 6: coco-caption takes 4, so no brevity penalty.
    # Matches 5/5, 3/4 ("a horse" misses), 2/3, 1/2 ("the man rides a").
    score = bleu4(["the man rides a horse"], [["the man rides horse", "the man rides a brown horse"]])
    assert score == pytest.approx((1 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25, rel=1e-6)


def test_bleu4_no_matching_4gram_is_near_zero() -> None:
    assert bleu4(["a cat sits on the mat"], [["a cat is on a mat"]]) < 1e-3


def test_cider_d_hand_computed() -> None:
    # idf = log(2) - log(df): "car" is in both images' references (idf 0), everything else log 2 (unseen
    # "bus" too, df clipped to 1). Image 1: uni and bigram cosines 1, no 3/4-grams -> 10 * 2/4 = 5.
    # Image 2: unigram cosine log2^2 / (sqrt(2) log2 * log2) = 1/sqrt(2), bigram 0 -> 10 / (4 sqrt(2)).
    score = cider_d(["red car", "blue bus"], [["red car"], ["blue car"]])
    assert score == pytest.approx((5 + 10 / (4 * math.sqrt(2))) / 2, rel=1e-9)


REFS = [
    ["a man riding a horse on a sandy beach", "a person rides a brown horse along the shore"],
    ["two dogs playing with a frisbee in the park", "a pair of dogs chase a frisbee on the grass"],
    ["a red double decker bus driving down a street", "a bus on a city street with people waiting"],
    ["a plate of pasta with tomato sauce and basil", "a bowl of spaghetti topped with red sauce"],
]


def test_cider_d_identical_single_reference_is_maximal() -> None:
    refs = [[r[0]] for r in REFS]
    assert cider_d([r[0] for r in refs], refs) == pytest.approx(10.0)
    worse = [refs[0][0].replace("sandy ", ""), *[r[0] for r in refs[1:]]]
    assert cider_d(worse, refs) < 10.0


def test_cider_d_order_of_magnitude_and_ranking() -> None:
    good = [
        "a man riding a horse on the beach",
        "two dogs playing with a frisbee",
        "a red bus on a street",
        "a plate of pasta with red sauce",
    ]
    bad = [
        "a plate of pasta with red sauce",
        "a red bus on a street",
        "two dogs playing with a frisbee",
        "a man riding a horse on the beach",
    ]
    good_score, bad_score = cider_d(good, REFS), cider_d(bad, REFS)
    assert 0.5 < good_score < 10 and bad_score < 0.3 * good_score


def test_cider_d_length_penalty_lowers_short_candidate(monkeypatch: pytest.MonkeyPatch) -> None:
    refs = [["a dog a dog a dog a dog a dog a dog"], ["a cat on a mat"]]
    short = ["a dog a dog", "a cat on a mat"]
    penalised = cider_d(short, refs)
    # The short candidate has 3 bigrams against 11: its term is at most 10 * exp(-8^2 / (2 * 6^2)).
    assert penalised <= (10 * math.exp(-64 / 72) + 10) / 2 + 1e-9
    monkeypatch.setattr(cm, "CIDER_SIGMA", 1e9)  # no length penalty: the proportional counts score far higher
    assert cider_d(short, refs) > penalised + 1.0


def test_caption_metrics_combines_both() -> None:
    cands = [r[0] for r in REFS]
    out = caption_metrics(cands, REFS)
    assert out == {"bleu4": pytest.approx(bleu4(cands, REFS)), "cider_d": pytest.approx(cider_d(cands, REFS))}


@pytest.mark.parametrize(
    ("cands", "refs"),
    [([], []), (["a cat"], []), (["a cat"], [[]]), ("a cat", [["a cat"]]), (["a cat"], ["a cat"])],
)
def test_invalid_inputs_raise(cands, refs) -> None:
    with pytest.raises(ValueError):
        caption_metrics(cands, refs)
