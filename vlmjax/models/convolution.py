"""2-D convolutions and average pooling over NHWC activations, HWIO kernels with logical axes.

Padding is explicit (k // 2 on every side, PyTorch's `padding=k // 2`), not XLA's "SAME":
for a strided convolution on an even size "SAME" pads only after the image, which moves every
window by one pixel against PyTorch's (and so against imported CLIP weights).

Two implementations of the same sums (`impl`):
- "xla": `lax.conv_general_dilated` (cuDNN on GPU; on CPU XLA's own convolution, which the
  2-core host of the measurements below runs as YNNPACK fusions);
- "im2col": the k x k shifted views concatenated on the channel axis, then ONE matmul
  [b*h*w, k*k*c] x [k*k*c, out]; its backward is two matmuls and slices.
"auto" is "xla" everywhere: on 2 loaded CPU cores (bench/resnet_step.py) the two were within
10% of each other on the demo, an RN50-shaped CLIP at 64 px and RN50 at 224 px, either ahead by
turns (one early measurement under heavier load had im2col 3x slower), and on GPU XLA's is
cuDNN's. A 1 x 1 convolution with stride 1 is always one matmul.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from vlmjax.models import layers

IMPLEMENTATIONS = ("auto", "xla", "im2col")


def resolve_impl(impl: str) -> str:
    """"auto" -> "xla"; other names unchanged."""
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"convolution implementation must be one of {IMPLEMENTATIONS}, got {impl!r}")
    return "xla" if impl == "auto" else impl


def _im2col(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    kh, kw, cin, cout = kernel.shape
    b, h, w, _ = x.shape
    ph, pw = kh // 2, kw // 2
    ho, wo = (h + 2 * ph - kh) // stride + 1, (w + 2 * pw - kw) // stride + 1
    xp = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    views = [xp[:, i: i + stride * (ho - 1) + 1: stride, j: j + stride * (wo - 1) + 1: stride]
             for i in range(kh) for j in range(kw)]
    cols = jnp.concatenate(views, axis=-1).reshape(b * ho * wo, kh * kw * cin)
    return jnp.dot(cols, kernel.reshape(kh * kw * cin, cout)).reshape(b, ho, wo, cout)


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1, impl: str = "auto") -> jax.Array:
    """x [b, h, w, c] * kernel [kh, kw, c, out] (no bias), padding kh // 2 and kw // 2."""
    kh, kw, cin, cout = kernel.shape
    if kh == kw == 1 and stride == 1:
        return jnp.dot(x.reshape(-1, cin), kernel.reshape(cin, cout)).reshape(*x.shape[:3], cout)
    if resolve_impl(impl) == "im2col":
        return _im2col(x, kernel, stride)
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride),
                                        ((kh // 2, kh // 2), (kw // 2, kw // 2)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def avg_pool(x: jax.Array, size: int) -> jax.Array:
    """Non-overlapping `size` x `size` average pooling (PyTorch's AvgPool2d(size)); the spatial
    sizes must be multiples of `size` (validation guarantees it)."""
    if size == 1:
        return x
    b, h, w, c = x.shape
    return x.reshape(b, h // size, size, w // size, size, c).mean(axis=(2, 4))


class Conv(nnx.Module):
    """A bias-free convolution: kernel [k, k, in, out] ("embed" on the output channels)."""

    def __init__(self, cin: int, cout: int, size: int, *, rngs: nnx.Rngs, stride: int = 1,
                 impl: str = "auto", axes: Sequence[str | None] = (None, None, None, "embed")):
        init = jax.nn.initializers.he_normal(in_axis=(0, 1, 2), out_axis=3)
        self.kernel = layers.param(rngs, init, (size, size, cin, cout), axes)
        self.stride, self.impl = stride, impl

    def __call__(self, x: jax.Array) -> jax.Array:
        return conv2d(x, self.kernel[...].astype(x.dtype), self.stride, self.impl)
