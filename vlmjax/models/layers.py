"""Transformer building blocks in Flax NNX with logically named parameter axes.

Every einsum names its axes: b batch, t/s query/key length, d embed, n heads, h head dim,
f mlp hidden. Parameters carry `logical_axes` metadata that the sharding rules map to the mesh.
"""

import functools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from vlmjax.models import stacked
from vlmjax.models.cpu_attention import heads_major_attention
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


def dense(x: jax.Array, kernel: jax.Array, bias: jax.Array | None = None) -> jax.Array:
    """x [..., d] @ kernel [d, *out] (+ bias [*out]) as ONE matmul of the rows [rows, d].

    The same sums as the named einsum ("btd,dnh->btnh", ...), but XLA:CPU then needs no
    transposed copies of activations for the weight gradients (its dots contract one axis
    in place; a gradient contracting b and t together was copied to [d, b*t] first):
    measured 15% off the demo CLIP's train step on 2 CPU cores. The kernel is flattened to
    [d, prod(out)] too: with its output axes kept, XLA:CPU computed the gradient of a
    [d, 3, n, h] kernel transposed and copied it back (12% of the demo CLIP's op time). A
    sharded leading output axis stays sharded through the flattening; shard no later one.
    """
    d, out = kernel.shape[0], kernel.shape[1:]
    if jax.default_backend() == "cpu":
        # 2-D operands: XLA:CPU's fallback dot rejects bfloat16 x bfloat16 -> float32 with
        # more than one output axis. A missing bias is a zero one (its gradient is unused).
        flat_bias = jnp.zeros(kernel.shape[1:], x.dtype) if bias is None else bias
        y = _cpu_dense(x.reshape(-1, d), kernel.reshape(d, -1), flat_bias.reshape(-1))
    else:
        y = jax.lax.dot_general(x.reshape(-1, d), kernel.reshape(d, -1), (((1,), (0,)), ((), ())))
        y = y if bias is None else y + bias.reshape(-1)
    return y.reshape(*x.shape[:-1], *out)


def _matmul_f32(a: jax.Array, b: jax.Array, contract: tuple[tuple[int, ...], tuple[int, ...]]
                ) -> jax.Array:
    return jax.lax.dot_general(a, b, (contract, ((), ())), preferred_element_type=jnp.float32)


def _cpu_dense(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """x [rows, d] @ kernel [d, n] + bias [n] on XLA:CPU, with a hand-written backward.

    Every matmul (forward and both gradients) asks for float32 results, rounded back to the
    operands' dtype: for bfloat16 that is the fast path, a bfloat16 x bfloat16 -> float32 dot
    on AMX / AVX512-BF16 (3-5x float32 on a Xeon with AMX), where autodiff would make the
    gradient dots float32 x bfloat16 (the slow path). For float32 the sums are autodiff's; the
    backward also picks the faster form of the weight gradient (`_weight_gradient`).

    The forward matmul stays a plain dot outside the custom VJP, so that remat policies that
    save dots (`stacked.REMAT_POLICIES`) still see it; its gradients come from
    `_dense_gradients`, which adds zeros (folded away by XLA) and carries the backward.
    """
    y = (_matmul_f32(x, kernel, ((1,), (0,))) + bias).astype(x.dtype)
    return jax.lax.stop_gradient(y) + _dense_gradients(x, kernel, bias)


@jax.custom_vjp
def _dense_gradients(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """Zeros [rows, n] whose backward is dense's: (dx, dkernel, dbias) of the cotangent."""
    return jnp.zeros((x.shape[0], kernel.shape[1]), x.dtype)


def _dense_fwd(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> tuple[jax.Array, tuple]:
    return _dense_gradients(x, kernel, bias), (x, kernel, bias)


def _dense_bwd(residuals: tuple, g: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    x, kernel, bias = residuals
    dx = _matmul_f32(g, kernel, ((1,), (1,))).astype(x.dtype)  # [rows, d]
    dkernel = _weight_gradient(x, g).astype(kernel.dtype)  # [d, n]
    dbias = g.astype(jnp.float32).sum(0).astype(bias.dtype)
    return dx, dkernel, dbias


_dense_gradients.defvjp(_dense_fwd, _dense_bwd)

# Input widths up to which a weight gradient with at most half as many outputs as inputs is
# computed as (g^T x)^T (see `_weight_gradient`).
TRANSPOSED_WGRAD_MAX_WIDTH = 768


def _weight_gradient(x: jax.Array, g: jax.Array) -> jax.Array:
    """x [rows, d]^T @ g [rows, n] -> [d, n] in float32, contracting the rows.

    XLA:CPU runs this contraction of both operands' leading axis through Eigen, whose speed
    depends on which operand is the transposed lhs. With many rows and 2n <= d <= 768 (the
    demo models' second MLP layer, d = 4n), computing g^T x [n, d] and transposing that small
    result was 1.1-1.7x faster on 2 Xeon cores at 4096 rows (d = 384, n = 96: 1.75 vs
    3.02 ms). At d >= 1024 it was 1.5x faster to 1.2x slower (faster at n = 64 and 128, slower
    from n = 256), at d = 96, n = 64 1.2x slower and at n > d up to 1.7x slower (d = 96,
    n = 384), so those keep the plain form.
    """
    d, n = x.shape[1], g.shape[1]
    if 2 * n <= d <= TRANSPOSED_WGRAD_MAX_WIDTH:
        # The barrier keeps XLA from folding the transpose back into the dot.
        return jax.lax.optimization_barrier(_matmul_f32(g, x, ((0,), (0,)))).T
    return _matmul_f32(x, g, ((0,), (0,)))


class LayerNorm(nnx.Module):
    """LayerNorm over the last axis, computed in float32 whatever the compute dtype."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs, eps: float = 1e-5):
        self.scale = param(rngs, ones, (dim,), ("embed",))
        self.bias = param(rngs, zeros, (dim,), ("embed",))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = x.dtype
        x, scale, bias = x.astype(jnp.float32), self.scale[...], self.bias[...]
        if jax.default_backend() == "cpu":
            return _layer_norm(x, scale, bias, self.eps).astype(dtype)
        return _layer_norm_fwd(x, scale, bias, self.eps)[0].astype(dtype)


def _layer_norm_fwd(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float
                    ) -> tuple[jax.Array, tuple]:
    centered = x - x.mean(-1, keepdims=True)
    inv_std = jax.lax.rsqrt(jnp.square(centered).mean(-1, keepdims=True) + eps)
    normed = centered * inv_std
    return normed * scale + bias, (normed, inv_std, scale)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
    """LayerNorm over the last axis with the textbook backward written out: with n = the
    normalised x and g' = g * scale, dx = inv_std * (g' - mean(g') - n * mean(g' * n)).

    The same values as autodiff's backward up to float32 rounding, in fewer and simpler
    passes: XLA:CPU ran autodiff's version as ~9 fusions per norm, some feeding YNNPACK
    broadcasts it had to write out first (demo CLIP train step -5%, ViT-B/32 level).

    It also materialises the residual stream's gradient once per block. With autodiff's
    backward, XLA:CPU fused that gradient's chain of element-wise ops (the skip path plus
    every later LayerNorm's backward) into each consumer, so each block recomputed the
    backward of all blocks above it (ViT-B/32: fusions of up to 850 instructions, 8% of the
    step). An identity with an in-place zero update in its backward used to stop that at each
    block; with this backward the chain no longer forms, and that boundary cost up to three
    copies of the gradient per block (removed: train step 1-2% faster on the demo CLIP, CoCa and
    ViT-B/32, fp32 and bf16).
    """
    return _layer_norm_fwd(x, scale, bias, eps)[0]


def _layer_norm_bwd(eps: float, residuals: tuple, g: jax.Array
                    ) -> tuple[jax.Array, jax.Array, jax.Array]:
    del eps
    normed, inv_std, scale = residuals
    g_scaled = g * scale
    dx = inv_std * (g_scaled - g_scaled.mean(-1, keepdims=True)
                    - normed * (g_scaled * normed).mean(-1, keepdims=True))
    rows = tuple(range(g.ndim - 1))
    return dx, (g * normed).sum(rows), g.sum(rows)


_layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


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


# Rows per input width from which self-attention stacks its q/k/v kernels into one matmul.
# Measured on 2 CPU cores (in-step A/B of the train step): three matmuls were 1.6-3% faster at
# ViT-B/32 batch 8 (rows = 0.5 and 1.2 x width), level at batch 32 (2 and 5 x), and 3.5%
# slower on the demo CLIP (43 and 64 x): the crossover lies between, 8 splits it.
STACK_ROWS_PER_WIDTH = 8


class Attention(nnx.Module):
    """Multi-head attention: q/k/v and output projections around `attention`."""

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
        """x: [b, t, d]; kv: [b, s, d] (defaults to x); mask: [b, s] True where keys are valid.

        With many rows per weight (rows >= STACK_ROWS_PER_WIDTH * d), self-attention projects
        q, k and v in ONE matmul [rows, d] x [d, 3 * n * h] (the three kernels stacked on a new
        axis after the heads, [d, n, 3, h]: `dense` flattens it to [d, n * 3 * h] and a
        tensor-sharded heads axis stays sharded through that), cross-attention k and v in one:
        one pass over the activations instead of three, and one gradient matmul back. With few
        rows, copying the kernels into the stack (and the gradients out of it) costs more than
        it saves, and each projection is its own matmul.
        """
        dt = x.dtype
        source = x if kv is None else kv
        names = ("query", "key", "value") if kv is None else ("key", "value")
        if math.prod(source.shape[:-1]) >= STACK_ROWS_PER_WIDTH * source.shape[-1]:
            kernel = jnp.stack([getattr(self, n)[...] for n in names], axis=2).astype(dt)
            bias = jnp.stack([getattr(self, f"{n}_bias")[...] for n in names], axis=1).astype(dt)
            projected = dense(source, kernel, bias)  # [b, s, n, 2 or 3, h]
            parts = [jnp.squeeze(p, 3) for p in jnp.split(projected, len(names), axis=3)]
        else:
            parts = [dense(source, getattr(self, n)[...].astype(dt),
                           getattr(self, f"{n}_bias")[...].astype(dt)) for n in names]
        if kv is None:
            q, k, v = parts
        else:
            k, v = parts
            q = dense(x, self.query[...].astype(dt), self.query_bias[...].astype(dt))
        o = attention(q, k, v, mask=mask, causal=causal)
        heads, head_dim, dim = self.out.shape
        out = self.out[...].astype(dt).reshape(heads * head_dim, dim)  # btnh,nhd->btd
        return dense(o.reshape(*o.shape[:2], heads * head_dim), out, self.out_bias[...].astype(dt))


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, mask: jax.Array | None = None,
              causal: bool = False) -> jax.Array:
    """softmax(q k^T / sqrt(h)) v per head: q [b, t, n, h], k and v [b, s, n, h] -> [b, t, n, h].

    `jax.nn.dot_product_attention` (fused kernels where the platform has them), on CPU the
    same sums heads-major (`heads_major_attention`), under the name scope "attention_core"
    that bench/profile_step.py attributes time by. mask: [b, s] True where keys are valid.
    """
    q = constrain(q, ("batch", "length", "heads", "kv"))
    k = constrain(k, ("batch", "length", "heads", "kv"))
    v = constrain(v, ("batch", "length", "heads", "kv"))
    key_mask = None if mask is None else mask[:, None, None, :]  # [b, 1(n), 1(t), s]
    with jax.named_scope("attention_core"):
        if jax.default_backend() == "cpu":
            return heads_major_attention(q, k, v, mask=key_mask, causal=causal)
        return jax.nn.dot_product_attention(q, k, v, mask=key_mask, is_causal=causal)


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
