"""Greedy, sampling and beam search against brute force on a toy model whose cache matters.

The toy logits are sums of two float32 table entries (one correctly rounded add, the same in
NumPy and XLA on any host), and every choice below is decided far above rounding (checked in
test_toy_choices_are_far_from_ties), so chosen tokens are compared exactly."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlmjax.generation.decoding import beam_search, filter_logits, greedy, sample

V, EOS = 5, 4
_rng = np.random.default_rng(0)
TRANSITION = _rng.normal(size=(V, V)).astype(np.float32) * 2
HISTORY = _rng.normal(size=(V, V)).astype(np.float32) * 2


def toy_step(previous, cache, position):
    """Logits depend on the previous token AND on the cache (the sum of all tokens so far)."""
    del position
    total = cache + previous
    return jnp.asarray(TRANSITION)[previous] + jnp.asarray(HISTORY)[total % V], total


def _numpy_logprobs(previous: int, total: int) -> np.ndarray:
    logits = TRANSITION[previous] + HISTORY[(total + previous) % V]
    return logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()


def brute_force_best(first: int, max_len: int) -> tuple[list[int], float, float]:
    """Exhaustive search over every sequence that stops at EOS or at max_len: the best, its
    summed log-probability and the runner-up's."""
    best, best_score, runner_up = None, -np.inf, -np.inf
    for length in range(1, max_len + 1):
        for seq in itertools.product(range(V), repeat=length):
            if EOS in seq[:-1] or (length < max_len and seq[-1] != EOS):
                continue
            previous, total, score = first, 0, 0.0
            for token in seq:
                score += _numpy_logprobs(previous, total)[token]
                total, previous = total + previous, token
            if score > best_score:
                best, best_score, runner_up = list(seq), score, best_score
            else:
                runner_up = max(runner_up, score)
    return best, best_score, runner_up


FIRST = jnp.array([0, 1, 2, 3], jnp.int32)
CACHE = jnp.zeros(4, jnp.int32)
DECIDED = 1e-3  # far above float32 rounding of these log-probabilities (|x| < 30: ~2e-6)


def test_toy_choices_are_far_from_ties():
    """The exact token comparisons here hold on any host: no two toy logits of a step, and no
    best and runner-up sequence of the exhaustive search, are within DECIDED."""
    rows = np.sort([TRANSITION[p] + HISTORY[h] for p in range(V) for h in range(V)], axis=1)
    assert np.diff(rows, axis=1).min() > DECIDED
    for first in np.asarray(FIRST):
        _, best, runner_up = brute_force_best(int(first), 3)
        assert best - runner_up > DECIDED


def test_beam_search_with_enough_beams_finds_the_exact_optimum():
    tokens, lengths = jax.jit(lambda f, c: beam_search(toy_step, c, f, num_beams=25, max_len=3,
                                                       eos_id=EOS))(FIRST, CACHE)
    for row, first in enumerate(np.asarray(FIRST)):
        want, _, _ = brute_force_best(int(first), 3)
        assert list(np.asarray(tokens[row, : int(lengths[row])])) == want


def test_one_beam_equals_greedy_and_greedy_follows_the_argmax():
    g_tokens, g_lengths = jax.jit(lambda f, c: greedy(toy_step, c, f, max_len=6, eos_id=EOS))(
        FIRST, CACHE)
    b_tokens, b_lengths = beam_search(toy_step, CACHE, FIRST, num_beams=1, max_len=6, eos_id=EOS)
    np.testing.assert_array_equal(g_tokens, b_tokens)
    np.testing.assert_array_equal(g_lengths, b_lengths)
    for row, first in enumerate(np.asarray(FIRST)):  # replay in NumPy
        previous, total = int(first), 0
        for position in range(int(g_lengths[row])):
            want = int(np.argmax(_numpy_logprobs(previous, total)))
            assert int(g_tokens[row, position]) == want
            total, previous = total + previous, want
        assert (np.asarray(g_tokens[row, int(g_lengths[row]):]) == EOS).all()  # padded after EOS


def test_sampling_with_top_k_1_or_a_tiny_nucleus_is_greedy():
    want, _ = greedy(toy_step, CACHE, FIRST, max_len=6, eos_id=EOS)
    for kwargs in (dict(top_k=1), dict(top_p=1e-6)):
        got, _ = sample(toy_step, CACHE, FIRST, jax.random.key(3), max_len=6, eos_id=EOS, **kwargs)
        np.testing.assert_array_equal(got, want)


def test_filter_logits_top_k_and_top_p_against_numpy():
    logits = jnp.asarray(_rng.normal(size=(6, 9)).astype(np.float32))
    kept = np.isfinite(np.asarray(filter_logits(logits, top_k=3)))
    assert (kept.sum(-1) == 3).all()
    np.testing.assert_array_equal(kept, np.asarray(logits) >= np.sort(logits, -1)[:, -3:-2])
    nucleus = np.isfinite(np.asarray(filter_logits(logits, top_p=0.7)))
    for row, mask in zip(np.asarray(logits), nucleus, strict=True):
        order = np.argsort(-row)
        probs = np.exp(row - row.max()) / np.exp(row - row.max()).sum()
        assert np.abs(np.cumsum(probs[order]) - 0.7).min() > DECIDED  # the cut is not a near-tie
        needed = int(np.searchsorted(np.cumsum(probs[order]), 0.7) + 1)  # smallest set with mass >= p
        assert set(np.nonzero(mask)[0]) == set(order[:needed])


def test_top_k_sampling_matches_the_renormalised_distribution():
    n = 4000
    first, cache = jnp.zeros(n, jnp.int32), jnp.zeros(n, jnp.int32)
    tokens, _ = sample(toy_step, cache, first, jax.random.key(0), max_len=1, eos_id=EOS, top_k=2)
    logits = TRANSITION[0] + HISTORY[0]
    top2 = np.argsort(-logits)[:2]
    probs = np.exp(logits[top2] - logits[top2].max())
    probs /= probs.sum()
    counts = np.bincount(np.asarray(tokens[:, 0]), minlength=V)
    assert counts[np.setdiff1d(np.arange(V), top2)].sum() == 0
    np.testing.assert_allclose(counts[top2] / n, probs, atol=0.03)


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_beam_results_are_complete_hypotheses(length_penalty):
    tokens, lengths = beam_search(toy_step, CACHE, FIRST, num_beams=3, max_len=5, eos_id=EOS,
                                  length_penalty=length_penalty)
    for row in range(len(FIRST)):
        n = int(lengths[row])
        assert n == 5 or int(tokens[row, n - 1]) == EOS
        assert (np.asarray(tokens[row, n:]) == EOS).all()
