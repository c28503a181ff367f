"""Transformer building blocks in Flax NNX with logically named parameter axes.

Every einsum names its axes: b batch, t/s query/key length, d embed, n heads, h head dim,
f mlp hidden. Parameters carry `logical_axes` metadata that the sharding rules map to the mesh.
"""

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from vlmjax.models import stacked
from vlmjax.parallel.logical import constrain

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),  # OpenAI CLIP weights use this
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),  # flax's nn.gelu (big_vision)
}


def param(rngs: nnx.Rngs, init: Callable, shape: Sequence[int],
          axes: Sequence[str | None]) -> nnx.Param:
    """A float32 parameter annotated with its logical axis names."""
    return nnx.Param(init(rngs.params(), tuple(shape), jnp.float32), logical_axes=tuple(axes))


zeros = jax.nn.initializers.zeros
ones = jax.nn.initializers.ones
normal = jax.nn.initializers.normal
xavier = jax.nn.initializers.xavier_uniform


def dense(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """x [..., d] @ kernel [d, *out] + bias [*out] as ONE 2-D matmul [rows, d] x [d, prod(out)].

    The same sums as the named einsum ("btd,dnh->btnh", ...), but XLA:CPU then needs no
    transposed copies of activations for the weight gradients (its dots contract one axis
    in place; a gradient contracting b and t together was copied to [d, b*t] first):
    measured 15% off the demo CLIP's train step on 2 CPU cores.
    """
    d, out = kernel.shape[0], kernel.shape[1:]
    y = jnp.dot(x.reshape(-1, d), kernel.reshape(d, -1))
    return y.reshape(*x.shape[:-1], *out) + bias


class LayerNorm(nnx.Module):
    """LayerNorm over the last axis, computed in float32 whatever the compute dtype."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs, eps: float = 1e-5):
        self.scale = param(rngs, ones, (dim,), ("embed",))
        self.bias = param(rngs, zeros, (dim,), ("embed",))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = x.dtype
        x = x.astype(jnp.float32)
        mean = x.mean(-1, keepdims=True)
        var = jnp.square(x - mean).mean(-1, keepdims=True)
        y = (x - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]
        return y.astype(dtype)


class Mlp(nnx.Module):
    """Two-layer MLP d -> f -> d."""

    def __init__(self, dim: int, hidden: int, activation: str, *, rngs: nnx.Rngs):
        self.fc1 = param(rngs, xavier(), (dim, hidden), ("embed", "mlp"))
        self.fc1_bias = param(rngs, normal(1e-6), (hidden,), ("mlp",))
        self.fc2 = param(rngs, xavier(), (hidden, dim), ("mlp", "embed"))
        self.fc2_bias = param(rngs, normal(1e-6), (dim,), ("embed",))
        self.activation = activation

    def __call__(self, x: jax.Array) -> jax.Array:
        dt = x.dtype
        h = dense(x, self.fc1[...].astype(dt), self.fc1_bias[...].astype(dt))  # btd,df->btf
        h = constrain(ACTIVATIONS[self.activation](h), ("batch", "length", "mlp"))
        return dense(h, self.fc2[...].astype(dt), self.fc2_bias[...].astype(dt))  # btf,fd->btd


class Attention(nnx.Module):
    """Multi-head attention through `jax.nn.dot_product_attention` (fused where available)."""

    def __init__(self, dim: int, heads: int, *, rngs: nnx.Rngs, kv_dim: int | None = None):
        head_dim = dim // heads
        kv_dim = kv_dim or dim
        init = xavier(in_axis=0, out_axis=(1, 2))
        self.query = param(rngs, init, (dim, heads, head_dim), ("embed", "heads", "kv"))
        self.key = param(rngs, init, (kv_dim, heads, head_dim), ("embed", "heads", "kv"))
        self.value = param(rngs, init, (kv_dim, heads, head_dim), ("embed", "heads", "kv"))
        self.query_bias = param(rngs, zeros, (heads, head_dim), ("heads", "kv"))
        self.key_bias = param(rngs, zeros, (heads, head_dim), ("heads", "kv"))
        self.value_bias = param(rngs, zeros, (heads, head_dim), ("heads", "kv"))
        self.out = param(rngs, xavier(in_axis=(0, 1), out_axis=2), (heads, head_dim, dim),
                         ("heads", "kv", "embed"))
        self.out_bias = param(rngs, zeros, (dim,), ("embed",))

    def __call__(self, x: jax.Array, kv: jax.Array | None = None, *, causal: bool = False,
                 mask: jax.Array | None = None) -> jax.Array:
        """x: [b, t, d]; kv: [b, s, d] (defaults to x); mask: [b, s] True where keys are valid."""
        kv = x if kv is None else kv
        dt = x.dtype
        q = dense(x, self.query[...].astype(dt), self.query_bias[...].astype(dt))  # btd,dnh->btnh
        k = dense(kv, self.key[...].astype(dt), self.key_bias[...].astype(dt))  # bsd,dnh->bsnh
        v = dense(kv, self.value[...].astype(dt), self.value_bias[...].astype(dt))
        q = constrain(q, ("batch", "length", "heads", "kv"))
        k = constrain(k, ("batch", "length", "heads", "kv"))
        v = constrain(v, ("batch", "length", "heads", "kv"))
        key_mask = None if mask is None else mask[:, None, None, :]  # [b, 1(n), 1(t), s]
        o = jax.nn.dot_product_attention(q, k, v, mask=key_mask, is_causal=causal)
        heads, head_dim, dim = self.out.shape
        out = self.out[...].astype(dt).reshape(heads * head_dim, dim)  # btnh,nhd->btd
        return dense(o.reshape(*o.shape[:2], heads * head_dim), out, self.out_bias[...].astype(dt))


class Block(nnx.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, activation: str, *, rngs: nnx.Rngs,
                 norm_eps: float = 1e-5):
        self.ln_attn = LayerNorm(dim, rngs=rngs, eps=norm_eps)
        self.attn = Attention(dim, heads, rngs=rngs)
        self.ln_mlp = LayerNorm(dim, rngs=rngs, eps=norm_eps)
        self.mlp = Mlp(dim, mlp_dim, activation, rngs=rngs)

    def __call__(self, x: jax.Array, *, causal: bool = False,
                 mask: jax.Array | None = None) -> jax.Array:
        x = x + self.attn(self.ln_attn(x), causal=causal, mask=mask)
        x = x + self.mlp(self.ln_mlp(x))
        return constrain(x, ("batch", "length", "embed"))


class Encoder(nnx.Module):
    """A stack of `depth` pre-LN blocks, unrolled (default) or as one scanned, stacked block.

    Unrolled parameters live under `layers/<i>/...`; with `scan` they live under `block/...` with
    a leading "layers" axis (see `stacked.stack_layer_params` for the mapping). `remat` names
    the activation checkpoint policy applied to every block (`stacked.REMAT_POLICIES`).
    """

    def __init__(self, dim: int, depth: int, heads: int, mlp_dim: int, activation: str, *,
                 rngs: nnx.Rngs, remat: str = "none", scan: bool = False, norm_eps: float = 1e-5):
        stacked.remat_policy(remat)  # fail at build time on an unknown policy
        self.remat = remat
        self.scan = scan

        def make(block_rngs: nnx.Rngs) -> Block:
            return Block(dim, heads, mlp_dim, activation, rngs=block_rngs, norm_eps=norm_eps)

        if scan:
            self.block = stacked.create_stacked(make, depth, rngs)
        else:
            self.layers = nnx.List([make(rngs) for _ in range(depth)])

    def __call__(self, x: jax.Array, *, causal: bool = False,
                 mask: jax.Array | None = None) -> jax.Array:
        def call(layer: Block, h: jax.Array, layer_mask: jax.Array | None) -> jax.Array:
            return layer(h, causal=causal, mask=layer_mask)

        layers = self.block if self.scan else self.layers
        return stacked.apply_layers(layers, x, call, mask, remat=self.remat, scanned=self.scan)


class AttentionPool(nnx.Module):
    """MAP head (big_vision's MAPHead): learned probe queries attend over the tokens, then
    y + mlp(ln(y)); with activation "gelu_tanh" and norm_eps 1e-6 it computes MAPHead exactly."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, activation: str, *, rngs: nnx.Rngs,
                 num_queries: int = 1, norm_eps: float = 1e-5):
        self.probe = param(rngs, xavier(), (num_queries, dim), (None, "embed"))
        self.attn = Attention(dim, heads, rngs=rngs)
        self.ln = LayerNorm(dim, rngs=rngs, eps=norm_eps)
        self.mlp = Mlp(dim, mlp_dim, activation, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [b, s, d] -> [b, num_queries, d]."""
        probe = jnp.broadcast_to(self.probe[...].astype(x.dtype), (x.shape[0], *self.probe.shape))
        y = self.attn(probe, x)
        return y + self.mlp(self.ln(y))
