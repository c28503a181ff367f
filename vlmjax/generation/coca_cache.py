"""A key/value-cached, one-token-at-a-time step of CoCa's captioner for `generation.decoding`.

The cache (every leaf batch-major, so beam search can reorder it with a gather):
- "unimodal" / "multimodal": per layer, the causal self-attention keys and values
  {"k", "v"} of shape [n, context_length, heads, head_dim], zero-initialised; the step writes
  position p and attends to positions <= p only;
- "cross": per multimodal layer, the cross-attention keys/values of the caption tokens
  [n, q, heads, head_dim], computed once by `coca_step`.
The unimodal CLS token is not part of generation (it only pools the text embedding).
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from vlmjax.errors import ConfigError
from vlmjax.generation import decoding
from vlmjax.generation.decoding import StepFn
from vlmjax.models import layers
from vlmjax.models.coca import CoCa
from vlmjax.tokenizers import Tokenizer

METHODS = ("greedy", "beam", "sample")


def layer_modules(stack: nnx.Module) -> list[nnx.Module]:
    """The blocks of an Encoder / MultimodalDecoder, in order; scanned stacks are indexed per layer."""
    if not stack.scan:
        return list(stack.layers)
    graphdef, state = nnx.split(stack.block)
    depth = jax.tree.leaves(state)[0].shape[0]
    return [nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], state)) for i in range(depth)]


def _project(attn: layers.Attention, x: jax.Array, name: str) -> jax.Array:
    """x [b, t, d] -> the `name` ("query", "key", "value") projection [b, t, heads, head_dim]."""
    dt = x.dtype
    weight, bias = getattr(attn, name)[...], getattr(attn, f"{name}_bias")[...]
    return jnp.einsum("btd,dnh->btnh", x, weight.astype(dt)) + bias.astype(dt)


def _attend(attn: layers.Attention, x: jax.Array, k: jax.Array, v: jax.Array,
            mask: jax.Array | None) -> jax.Array:
    """Queries of x [b, 1, d] over keys/values [b, s, heads, head_dim]; mask [b, s] or None."""
    q = _project(attn, x, "query")
    key_mask = None if mask is None else mask[:, None, None, :]  # [b, 1(n), 1(t), s]
    o = jax.nn.dot_product_attention(q, k.astype(x.dtype), v.astype(x.dtype), mask=key_mask)
    dt = x.dtype
    return jnp.einsum("btnh,nhd->btd", o, attn.out[...].astype(dt)) + attn.out_bias[...].astype(dt)


def _cached_self_attention(attn: layers.Attention, x: jax.Array, cache: dict, position: jax.Array
                           ) -> tuple[jax.Array, dict]:
    """Writes this token's key/value at `position`, attends to positions <= `position`."""
    k = jax.lax.dynamic_update_slice_in_dim(cache["k"], _project(attn, x, "key").astype(
        cache["k"].dtype), position, axis=1)
    v = jax.lax.dynamic_update_slice_in_dim(cache["v"], _project(attn, x, "value").astype(
        cache["v"].dtype), position, axis=1)
    mask = jnp.broadcast_to(jnp.arange(k.shape[1]) <= position, k.shape[:2])
    return _attend(attn, x, k, v, mask), {"k": k, "v": v}


def _empty_kv(attn: layers.Attention, n: int, length: int, dtype: jnp.dtype) -> dict:
    heads, head_dim = attn.query.shape[1:]
    zeros = jnp.zeros((n, length, heads, head_dim), dtype)
    return {"k": zeros, "v": zeros}


def init_cache(model: CoCa, caption_tokens: jax.Array) -> dict:
    """The zero self-attention caches and the cross-attention keys/values of `caption_tokens`."""
    n, length, dtype = caption_tokens.shape[0], model.text.pos_embed.shape[0], model.dtype
    image = caption_tokens.astype(dtype)
    cross = []
    for layer in layer_modules(model.decoder):
        kv = layer.ln_image(image)
        cross.append({"k": _project(layer.cross_attn, kv, "key"),
                      "v": _project(layer.cross_attn, kv, "value")})
    return {
        "unimodal": [_empty_kv(b.attn, n, length, dtype) for b in layer_modules(model.text.encoder)],
        "multimodal": [_empty_kv(b.self_attn, n, length, dtype)
                       for b in layer_modules(model.decoder)],
        "cross": cross,
    }


def coca_step(model: CoCa, caption_tokens: jax.Array) -> tuple[StepFn, dict]:
    """(step, initial cache) decoding `model`'s captioner conditioned on `caption_tokens` [n, q, d].

    `step(tokens [n], cache, position)` runs token ids at `position` (with that position's
    embedding) through every layer and returns (float32 logits [n, V] for the next token, cache).
    """
    text, decoder, dtype = model.text, model.decoder, model.dtype
    unimodal, multimodal = layer_modules(text.encoder), layer_modules(decoder)

    def step(tokens: jax.Array, cache: dict, position: jax.Array) -> tuple[jax.Array, dict]:
        x = jnp.take(text.token_embed[...], tokens, axis=0).astype(dtype)[:, None]  # [n, 1, d]
        pos = jax.lax.dynamic_index_in_dim(text.pos_embed[...], position, axis=0, keepdims=True)
        x = x + pos.astype(dtype)
        new: dict[str, Any] = {"unimodal": [], "multimodal": [], "cross": cache["cross"]}
        for block, kv in zip(unimodal, cache["unimodal"], strict=True):
            h, kv = _cached_self_attention(block.attn, block.ln_attn(x), kv, position)
            x = x + h
            x = x + block.mlp(block.ln_mlp(x))
            new["unimodal"].append(kv)
        for block, kv, cross in zip(multimodal, cache["multimodal"], cache["cross"], strict=True):
            h, kv = _cached_self_attention(block.self_attn, block.ln_self(x), kv, position)
            x = block.after_self_attention(x + h)
            x = x + _attend(block.cross_attn, block.ln_cross(x), cross["k"], cross["v"], None)
            x = x + block.mlp(block.ln_mlp(x))
            new["multimodal"].append(kv)
        x = decoder.ln_final(x)
        logits = jnp.einsum("btd,dv->btv", x, decoder.head[...].astype(x.dtype))[:, 0]
        return logits.astype(jnp.float32), new

    return step, init_cache(model, caption_tokens)


def text_special_ids(tokenizer: Tokenizer) -> tuple[int, int]:
    """(start-of-text, end-of-text) ids: what the tokenizer puts around an empty caption."""
    ids, mask = tokenizer.encode([""], 8)
    real = ids[0][mask[0]]
    if len(real) != 2:
        raise ConfigError(f"captioning needs a tokenizer that wraps captions in start/end-of-text "
                          f"tokens; {type(tokenizer).__name__} encodes '' as {real.tolist()}")
    return int(real[0]), int(real[1])


@functools.partial(jax.jit, static_argnames=(
    "graphdef", "method", "sot_id", "eot_id", "max_len", "num_beams", "top_k", "top_p",
    "temperature"))
def generate_tokens(graphdef: nnx.GraphDef, params: Any, images: jax.Array, rng: jax.Array, *,
                    method: str, sot_id: int, eot_id: int, max_len: int, num_beams: int,
                    top_k: int, top_p: float, temperature: float) -> tuple[jax.Array, jax.Array]:
    """Normalised images [b, H, W, c] -> generated ids [b, max_len] (EOT-padded), lengths [b]."""
    model = nnx.merge(graphdef, params)
    step, cache = coca_step(model, model.image_features(images)[1])
    first = jnp.full((images.shape[0],), sot_id, jnp.int32)
    if method == "greedy":
        return decoding.greedy(step, cache, first, max_len=max_len, eos_id=eot_id)
    if method == "sample":
        return decoding.sample(step, cache, first, rng, max_len=max_len, eos_id=eot_id,
                               temperature=temperature, top_k=top_k, top_p=top_p)
    return decoding.beam_search(step, cache, first, num_beams=num_beams, max_len=max_len,
                                eos_id=eot_id)


def generate_captions(model: CoCa | nnx.GraphDef, params: Any, images: jax.Array,
                      tokenizer: Tokenizer, *, method: str = "greedy", max_len: int | None = None,
                      num_beams: int = 4, top_k: int = 0, top_p: float = 1.0,
                      temperature: float = 1.0, rng: jax.Array | None = None) -> list[str]:
    """Captions for normalised float images [b, H, W, c], decoded from start-of-text (jit, batched).

    `model` is a CoCa module or its graphdef, `params` its pure-dict parameters. Decoding stops
    at end-of-text or after `max_len` tokens (default and maximum: context_length - 1).
    """
    if method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    graphdef = nnx.graphdef(model) if isinstance(model, nnx.Module) else model
    limit = nnx.merge(graphdef, params).text.pos_embed.shape[0] - 1
    max_len = limit if max_len is None else max_len
    if not 1 <= max_len <= limit:
        raise ConfigError(f"max_len must be in 1..{limit} (context_length - 1), got {max_len}")
    if method == "beam" and num_beams < 1:
        raise ConfigError(f"num_beams must be >= 1, got {num_beams}")
    sot_id, eot_id = text_special_ids(tokenizer)
    tokens, lengths = generate_tokens(
        graphdef, params, images, jax.random.key(0) if rng is None else rng, method=method,
        sot_id=sot_id, eot_id=eot_id, max_len=max_len, num_beams=num_beams, top_k=top_k,
        top_p=top_p, temperature=temperature)
    tokens, lengths = jax.device_get((tokens, lengths))
    return [tokenizer.decode(row[:n].tolist()) for row, n in zip(tokens, lengths, strict=True)]
