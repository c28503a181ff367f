"""CoOp (Zhou et al. 2022): context vectors learned in front of the class name, towers frozen.

A class's prompt is [start token] ctx_1 .. ctx_n <class name tokens> "." [end token]: the
token embeddings of a placeholder prefix are replaced by n learned vectors, shared by all
classes, and fed through the frozen text tower's embedding input. The class embeddings are
the normalised text embeddings of these prompts, and the model's logit scale turns cosines
into logits. Context either starts from the token embeddings of a phrase ("a photo of a",
then CoOp equals zero-shot with the template "a photo of a {c}." before training) or is drawn
from N(0, 0.02^2) with 16 vectors (CoOp's default). Training follows CoOp: SGD with momentum
0.9, lr 0.002, cosine schedule, batch 32, 50 epochs for 1-2 shots, 100 for 4-8, 200 for 16+.

Deviation: CoOp trains on augmented crops of the shots; here the image features are the
frozen, cached features of the shots themselves (the image tower never runs during training).
"""

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from vlmjax.errors import ConfigError
from vlmjax.tokenizers import Tokenizer

PLACEHOLDER = "X"  # CoOp's placeholder word for randomly initialised context


@dataclasses.dataclass(frozen=True)
class CoopOptions:
    """How context vectors are trained (CoOp's defaults)."""

    context_init: str = ""  # a phrase whose token embeddings start the context; "": random
    lr: float = 0.002
    batch_size: int = 32
    epochs: int = 0  # 0 = CoOp's schedule by number of shots (`coop_epochs`)


def coop_epochs(shots: int) -> int:
    """CoOp's schedule length by number of shots per class."""
    return 50 if shots <= 2 else 100 if shots <= 8 else 200


@dataclasses.dataclass(frozen=True)
class Prompts:
    """Tokenised class prompts and where the learned context goes in them."""

    ids: np.ndarray  # [C, L]
    mask: np.ndarray  # [C, L]
    start: int
    length: int


def _context_tokens(tokenizer: Tokenizer, context: str, context_length: int) -> np.ndarray:
    """The tokens of `context` without the tokenizer's start / end tokens: the part that
    repeats when the context is written twice."""
    once, once_mask = tokenizer.encode([context], 4 * context_length)
    twice, twice_mask = tokenizer.encode([f"{context} {context}"], 4 * context_length)
    a, b = once[0][once_mask[0].astype(bool)], twice[0][twice_mask[0].astype(bool)]
    n = len(b) - len(a)
    for start in range(len(a) - n + 1):
        run = a[start: start + n]
        if n > 0 and np.array_equal(b[start: start + n], run) and np.array_equal(
                b[start + n: start + 2 * n], run):
            return run
    raise ConfigError(f"cannot tell the tokens of the CoOp context {context!r} from the "
                      "tokenizer's special tokens; choose another coop_context_init")


def class_prompts(tokenizer: Tokenizer, classnames: Sequence[str], context: str,
                  context_length: int) -> Prompts:
    """Prompts "{context} {class}." and the token positions of `context` in them (the same
    offset in every prompt, right after the start token if the tokenizer has one)."""
    texts = [f"{context} {c}." for c in classnames]
    long_ids, long_mask = tokenizer.encode(texts, 4 * context_length)
    needed = int(long_mask.sum(axis=1).max())
    if needed > context_length:
        raise ConfigError(f"CoOp prompts need up to {needed} tokens ({context!r} + class name) but "
                          f"the text tower takes {context_length}; use fewer context vectors "
                          "(coop_num_context) or a shorter coop_context_init")
    ids, mask = long_ids[:, :context_length], long_mask[:, :context_length]
    run = _context_tokens(tokenizer, context, context_length)
    for start in range(context_length - len(run) + 1):
        if np.all(ids[:, start: start + len(run)] == run[None]):
            return Prompts(ids=ids, mask=mask, start=start, length=len(run))
    raise ConfigError(f"the context {context!r} does not tokenize to the same tokens in front of "
                      "every class name; choose another coop_context_init")


def context_init(model: Any, prompts: Prompts, random: bool, seed: int) -> jax.Array:
    """[n, d]: the context tokens' own embeddings, or N(0, 0.02^2) draws (CoOp's random init)."""
    ids = jnp.asarray(prompts.ids[:1, prompts.start: prompts.start + prompts.length])
    own = model.text.embed_tokens(ids)[0].astype(jnp.float32)  # [n, d]
    if random:
        return 0.02 * jax.random.normal(jax.random.key(seed), own.shape, jnp.float32)
    return own


def prompt_classifier(model: Any, prompts: Prompts, context: jax.Array) -> jax.Array:
    """[C, e] normalised text embeddings of the prompts with `context` in place."""
    ids = jnp.asarray(prompts.ids)
    embeds = model.text.embed_tokens(ids).astype(jnp.float32)
    embeds = embeds.at[:, prompts.start: prompts.start + prompts.length].set(
        jnp.broadcast_to(context, (ids.shape[0], *context.shape)))
    return model.encode_text(ids, jnp.asarray(prompts.mask), token_embeds=embeds)


def _prompts_of(ids: jax.Array, mask: jax.Array, where: tuple[int, int]) -> Prompts:
    return Prompts(ids=ids, mask=mask, start=where[0], length=where[1])


@functools.partial(jax.jit, static_argnames=("graphdef", "where"))
def _classifier(graphdef: Any, params: Any, ids: jax.Array, mask: jax.Array,
                where: tuple[int, int], context: jax.Array) -> jax.Array:
    return prompt_classifier(nnx.merge(graphdef, params), _prompts_of(ids, mask, where), context)


@functools.partial(jax.jit, static_argnames=("graphdef", "where"))
def _sgd_step(graphdef: Any, params: Any, ids: jax.Array, mask: jax.Array, where: tuple[int, int],
              context: jax.Array, velocity: jax.Array, features: jax.Array, labels: jax.Array,
              lr: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One SGD step with momentum 0.9 (optax.sgd's form: v = g + 0.9 v, ctx -= lr v). Module
    level, with the learning rate and prompts as inputs, so that every schedule, every trainer
    and every evaluator of the same model and prompt shape reuse one compiled step."""
    scale = jnp.exp(params["logit_scale"])
    prompts = _prompts_of(ids, mask, where)

    def loss(ctx: jax.Array) -> jax.Array:
        classes = prompt_classifier(nnx.merge(graphdef, params), prompts, ctx)
        logits = scale * features @ classes.T
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    velocity = jax.grad(loss)(context) + 0.9 * velocity
    return context - lr * velocity, velocity


class CoopTrainer:
    """Learns context vectors for a frozen model: one compiled step for any number of shots."""

    def __init__(self, graphdef: Any, params: Any, prompts: Prompts,
                 options: CoopOptions = CoopOptions()):
        self.graphdef, self.params, self.prompts = graphdef, params, prompts
        self.options = options
        self._inputs = (jnp.asarray(prompts.ids), jnp.asarray(prompts.mask),
                        (prompts.start, prompts.length))

    def initial_context(self, seed: int) -> jax.Array:
        return context_init(nnx.merge(self.graphdef, self.params), self.prompts,
                            random=not self.options.context_init, seed=seed)

    def classifier(self, context: jax.Array) -> np.ndarray:
        return np.asarray(_classifier(self.graphdef, self.params, *self._inputs, context))

    def train(self, features: np.ndarray, labels: np.ndarray, shots: int, seed: int) -> jax.Array:
        """Context vectors trained on (features, labels) with CoOp's schedule for `shots`."""
        o = self.options
        epochs = o.epochs or coop_epochs(shots)
        batch = o.batch_size
        steps_per_epoch = max(1, -(-len(labels) // batch))
        schedule = optax.cosine_decay_schedule(o.lr, epochs * steps_per_epoch)
        context = self.initial_context(seed)
        velocity, step = jnp.zeros_like(context), 0
        rng = np.random.default_rng(seed)
        features, labels = np.asarray(features, np.float32), np.asarray(labels, np.int32)
        for _ in range(epochs):
            # Each epoch is a permutation cut into full batches (the last one topped up from the
            # start of the permutation), so every step has the same shape: one compilation.
            order = np.resize(rng.permutation(len(labels)), steps_per_epoch * batch)
            for rows in order.reshape(steps_per_epoch, batch):
                context, velocity = _sgd_step(self.graphdef, self.params, *self._inputs, context,
                                              velocity, features[rows], labels[rows],
                                              jnp.float32(schedule(step)))
                step += 1
        return context
