"""Autoregressive decoding over a cached step function: greedy, top-k / top-p sampling, beam search.

The model side is one function, `step(tokens [n], cache, position) -> (logits [n, V], cache)`,
which consumes the previous token of each of n sequences and returns next-token logits with
its key/value cache advanced by one position. Every cache leaf is batch-major ([n, ...]), so
beam search can reorder it with a gather. All loops are `lax.while_loop`s: jit-compiled,
batched, and stopping once every sequence has emitted end-of-text or `max_len` is reached.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

StepFn = Callable[[jax.Array, Any, jax.Array], tuple[jax.Array, Any]]


def _take_rows(tree: Any, rows: jax.Array) -> Any:
    """Reorders the leading (batch) axis of every cache leaf."""
    return jax.tree.map(lambda x: jnp.take(x, rows, axis=0), tree)


def filter_logits(logits: jax.Array, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """Sets to -inf every logit outside the top k and outside the smallest nucleus of mass >= p.

    top_k = 0 and top_p = 1 keep everything; the most likely token is always kept.
    """
    if top_k:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        ordered = jnp.sort(logits, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(ordered, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        # The smallest logit still inside the nucleus; ties with it are kept too.
        inside = jnp.where(mass_before < top_p, ordered, jnp.inf)
        cutoff = jnp.min(inside, axis=-1, keepdims=True)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return logits


def _decode_loop(step: StepFn, cache: Any, first: jax.Array, max_len: int, eos_id: int,
                 choose: Callable[[jax.Array, jax.Array], jax.Array]) -> tuple[jax.Array, jax.Array]:
    """Shared loop of greedy and sampling: `choose(logits, position) -> tokens`."""
    n = first.shape[0]

    def cond(carry: tuple) -> jax.Array:
        position, _, _, _, finished = carry
        return (position < max_len) & ~jnp.all(finished)

    def body(carry: tuple) -> tuple:
        position, previous, cache, out, finished = carry
        logits, cache = step(previous, cache, position)
        token = jnp.where(finished, eos_id, choose(logits.astype(jnp.float32), position))
        out = out.at[:, position].set(token)
        return position + 1, token, cache, out, finished | (token == eos_id)

    out = jnp.full((n, max_len), eos_id, jnp.int32)
    carry = (jnp.int32(0), first.astype(jnp.int32), cache, out, jnp.zeros((n,), bool))
    _, _, _, out, _ = jax.lax.while_loop(cond, body, carry)
    return out, _lengths(out, eos_id)


def _lengths(tokens: jax.Array, eos_id: int) -> jax.Array:
    """Generated length of each row: up to and including the first end-of-text."""
    is_eos = tokens == eos_id
    first_eos = jnp.where(is_eos.any(-1), jnp.argmax(is_eos, axis=-1) + 1, tokens.shape[-1])
    return first_eos.astype(jnp.int32)


def greedy(step: StepFn, cache: Any, first: jax.Array, *, max_len: int, eos_id: int
           ) -> tuple[jax.Array, jax.Array]:
    """Most likely next token at every step: (tokens [n, max_len], lengths [n]); EOS-padded."""
    return _decode_loop(step, cache, first, max_len, eos_id,
                        lambda logits, _: jnp.argmax(logits, axis=-1).astype(jnp.int32))


def sample(step: StepFn, cache: Any, first: jax.Array, rng: jax.Array, *, max_len: int,
           eos_id: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
           ) -> tuple[jax.Array, jax.Array]:
    """Ancestral sampling from temperature-scaled, top-k / top-p filtered distributions."""
    def choose(logits: jax.Array, position: jax.Array) -> jax.Array:
        filtered = filter_logits(logits / temperature, top_k, top_p)
        return jax.random.categorical(jax.random.fold_in(rng, position), filtered).astype(jnp.int32)

    return _decode_loop(step, cache, first, max_len, eos_id, choose)


def beam_search(step: StepFn, cache: Any, first: jax.Array, *, num_beams: int, max_len: int,
                eos_id: int, length_penalty: float = 0.0) -> tuple[jax.Array, jax.Array]:
    """The highest-scoring of `num_beams` hypotheses per row: (tokens [b, max_len], lengths [b]).

    A hypothesis's score is its summed log-probability divided by length ** length_penalty
    (0: plain sum). Finished hypotheses stay in the beam with their score frozen (they can only
    extend with end-of-text at zero cost). `cache` and `first` are per row ([b, ...]); they are
    repeated for the beams here.
    """
    b, k = first.shape[0], num_beams
    cache = _take_rows(cache, jnp.repeat(jnp.arange(b), k))
    previous = jnp.repeat(first.astype(jnp.int32), k)
    # Only beam 0 is live at the start, so the k beams do not all pick the same first token.
    scores = jnp.tile(jnp.where(jnp.arange(k) == 0, 0.0, -jnp.inf), (b, 1))
    out = jnp.full((b, k, max_len), eos_id, jnp.int32)
    finished = jnp.zeros((b, k), bool)

    def cond(carry: tuple) -> jax.Array:
        position, _, _, _, _, finished = carry
        return (position < max_len) & ~jnp.all(finished)

    def body(carry: tuple) -> tuple:
        position, previous, cache, scores, out, finished = carry
        logits, cache = step(previous, cache, position)
        logprobs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1).reshape(b, k, -1)
        vocab = logprobs.shape[-1]
        frozen = jnp.where(jnp.arange(vocab) == eos_id, 0.0, -jnp.inf)
        logprobs = jnp.where(finished[..., None], frozen, logprobs)
        candidates = (scores[..., None] + logprobs).reshape(b, k * vocab)
        scores, flat = jax.lax.top_k(candidates, k)
        beam, token = flat // vocab, (flat % vocab).astype(jnp.int32)
        out = jnp.take_along_axis(out, beam[..., None], axis=1).at[:, :, position].set(token)
        finished = jnp.take_along_axis(finished, beam, axis=1) | (token == eos_id)
        rows = (jnp.arange(b)[:, None] * k + beam).reshape(-1)
        return position + 1, token.reshape(-1), _take_rows(cache, rows), scores, out, finished

    carry = (jnp.int32(0), previous, cache, scores, out, finished)
    _, _, _, scores, out, _ = jax.lax.while_loop(cond, body, carry)
    lengths = _lengths(out, eos_id)
    normalised = scores / lengths.astype(jnp.float32) ** length_penalty
    best = jnp.argmax(normalised, axis=1)
    tokens = jnp.take_along_axis(out, best[:, None, None], axis=1)[:, 0]
    return tokens, jnp.take_along_axis(lengths, best[:, None], axis=1)[:, 0]
