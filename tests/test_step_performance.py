"""The train step's speed-ups change no numbers: 2-D dense layers and fused attention against
NumPy, bfloat16 compute on float32 master weights, the persistent compilation cache."""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.ad_checkpoint import print_saved_residuals

from vlmjax.models import cpu_attention, layers, stacked
from vlmjax.train import compilation_cache


def _numpy_attention(attn: layers.Attention, x: np.ndarray, kv: np.ndarray,
                     valid: np.ndarray) -> np.ndarray:
    """Multi-head softmax attention in NumPy; valid [b, t, s] says which keys each query sees."""
    q = np.einsum("btd,dnh->btnh", x, attn.query[...]) + attn.query_bias[...]
    k = np.einsum("bsd,dnh->bsnh", kv, attn.key[...]) + attn.key_bias[...]
    v = np.einsum("bsd,dnh->bsnh", kv, attn.value[...]) + attn.value_bias[...]
    s = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1])
    s = np.where(valid[:, None], s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    o = np.einsum("bnts,bsnh->btnh", p, v)
    return np.einsum("btnh,nhd->btd", o, attn.out[...]) + attn.out_bias[...]


@pytest.mark.parametrize("length, projections", [(6, 3), (40, 1)])  # rows < or >= 8 x width
def test_causal_attention_with_padding_mask_matches_numpy(length, projections):
    """Few rows per weight: q, k and v are three matmuls; many: one on the stacked kernels."""
    rng = np.random.default_rng(0)
    attn = layers.Attention(12, 3, rngs=nnx.Rngs(1))
    x = rng.normal(size=(3, length, 12)).astype(np.float32)
    mask = np.arange(length)[None, :] < np.array([[length], [4], [1]])  # right padding
    fn = jax.jit(lambda x, m: attn(x, causal=True, mask=m))
    got = fn(jnp.asarray(x), jnp.asarray(mask))
    causal = np.tril(np.ones((length, length), bool))
    want = _numpy_attention(attn, x, x, causal[None] & mask[:, None, :])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    dots = str(jax.make_jaxpr(fn)(x, mask)).count("dot_general")
    assert dots == projections + 3  # + q k^T, p v and the output projection


@pytest.mark.parametrize("dtype, causal", [("float32", True), ("float32", False),
                                           ("bfloat16", True)])
def test_heads_major_attention_is_jax_dot_product_attention(dtype, causal):
    """The CPU attention (heads-major matmuls, hand-written backward) against
    jax.nn.dot_product_attention: outputs and the gradients of q, k and v, with a padding mask
    that leaves one row a single key and one row none (a uniform softmax, no gradient)."""
    keys = jax.random.split(jax.random.key(0), 4)
    q, k, v = (jax.random.normal(kk, (4, 7, 2, 8), dtype) for kk in keys[:3])
    mask = (jnp.arange(7)[None, :] < jnp.array([[7], [3], [1], [0]]))[:, None, None, :]
    cotangent = jax.random.normal(keys[3], (4, 7, 2, 8), dtype)

    def run(fn):
        out, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, mask=mask, is_causal=causal), q, k, v)
        return (out, *vjp(cotangent))

    got = run(lambda q, k, v, mask, is_causal: cpu_attention.heads_major_attention(
        q, k, v, mask=mask, causal=is_causal))
    want = run(jax.nn.dot_product_attention)
    tol = 1e-5 if dtype == "float32" else 2e-2  # bfloat16: a few roundings of O(1) values
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32),
                                   rtol=tol, atol=tol)


def test_cpu_attention_backward_matmuls_contract_the_lhs_last_axis():
    """Every batched matmul of the compiled attention gradient contracts its lhs's last axis
    (the form XLA:CPU hands to YNNPACK); autodiff's dv and dk contract the lhs rows."""
    q = jnp.ones((4, 16, 3, 32))
    grad = jax.jit(jax.grad(lambda q, k, v: jnp.sum(jnp.sin(
        cpu_attention.heads_major_attention(q, k, v))), argnums=(0, 1, 2)))
    hlo = grad.lower(q, q, q).compile().as_text()
    batched = re.findall(r"= f32\[4,3,\d+,\d+\]\S* dot\(.*?lhs_contracting_dims=\{(\d)\}", hlo)
    assert len(batched) == 6  # q k^T and p v forward; dv, dp, dq and dk
    assert set(batched) == {"3"}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_layer_norm_backward_is_autodiff_of_the_formula(dtype):
    """LayerNorm's hand-written backward (CPU) against JAX's autodiff of the plain formula:
    the output and the gradients of the input, scale and bias."""
    norm = layers.LayerNorm(24, rngs=nnx.Rngs(0), eps=1e-5)
    keys = jax.random.split(jax.random.key(1), 4)
    norm.scale[...] = 1 + 0.3 * jax.random.normal(keys[0], (24,))
    norm.bias[...] = 0.3 * jax.random.normal(keys[1], (24,))
    x = (3 + 2 * jax.random.normal(keys[2], (4, 5, 24))).astype(dtype)
    cotangent = jax.random.normal(keys[3], (4, 5, 24), dtype)

    def formula(x: jax.Array, scale: jax.Array, bias: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        mean = xf.mean(-1, keepdims=True)
        var = jnp.square(xf - mean).mean(-1, keepdims=True)
        return ((xf - mean) * jax.lax.rsqrt(var + 1e-5) * scale + bias).astype(x.dtype)

    def loss(out: jax.Array) -> jax.Array:
        return jnp.sum(out.astype(jnp.float32) * cotangent.astype(jnp.float32))

    ours = nnx.grad(lambda m, x: loss(m(x)), argnums=(0, 1))(norm, x)
    reference = jax.grad(lambda x, s, b: loss(formula(x, s, b)), argnums=(0, 1, 2))(
        x, norm.scale[...], norm.bias[...])
    results = [(norm(x), ours[1], ours[0]["scale"][...], ours[0]["bias"][...]),
               (formula(x, norm.scale[...], norm.bias[...]), *reference)]
    for got, want in zip(*results, strict=True):
        assert got.dtype == want.dtype
        # float32: sums of 20 rows / 24 features, a few roundings; bfloat16: one rounding of
        # the input gradient and output to 2^-8 relative.
        tol = 2e-5 if got.dtype == jnp.float32 else 2e-2
        scale = float(jnp.max(jnp.abs(want.astype(jnp.float32))))
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                                   rtol=tol, atol=tol * scale)


def test_cross_attention_to_another_width_and_length_matches_numpy():
    rng = np.random.default_rng(1)
    attn = layers.Attention(8, 2, rngs=nnx.Rngs(2), kv_dim=20)
    x = rng.normal(size=(2, 3, 8)).astype(np.float32)
    kv = rng.normal(size=(2, 5, 20)).astype(np.float32)
    mask = np.array([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], bool)
    got = jax.jit(lambda x, kv, m: attn(x, kv, mask=m))(jnp.asarray(x), jnp.asarray(kv),
                                                        jnp.asarray(mask))
    want = _numpy_attention(attn, x, kv, np.broadcast_to(mask[:, None, :], (2, 3, 5)))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_dense_is_the_named_einsum():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 5, 6)).astype(np.float32)
    kernel = rng.normal(size=(6, 3, 4)).astype(np.float32)
    bias = rng.normal(size=(3, 4)).astype(np.float32)
    got = layers.dense(jnp.asarray(x), jnp.asarray(kernel), jnp.asarray(bias))
    np.testing.assert_allclose(got, np.einsum("btd,dnh->btnh", x, kernel) + bias, rtol=1e-5,
                               atol=1e-5)
    flat = layers.dense(jnp.asarray(x[0]), jnp.asarray(kernel[:, 0]), jnp.asarray(bias[0]))
    np.testing.assert_allclose(flat, x[0] @ kernel[:, 0] + bias[0], rtol=1e-5, atol=1e-5)
    no_bias = layers.dense(jnp.asarray(x), jnp.asarray(kernel))
    np.testing.assert_allclose(no_bias, np.einsum("btd,dnh->btnh", x, kernel), rtol=1e-5,
                               atol=1e-5)
    low = layers.dense(jnp.asarray(x, jnp.bfloat16), jnp.asarray(kernel, jnp.bfloat16))
    np.testing.assert_allclose(np.asarray(low, np.float32), np.einsum("btd,dnh->btnh", x, kernel),
                               rtol=0.05, atol=0.1)  # bfloat16 operands and result


def test_multi_axis_kernel_gradient_is_not_copied_transposed():
    """A kernel with several output axes ([d, n, 3, h], the fused q/k/v projection) is
    multiplied as [d, n * 3 * h]: with its axes kept, XLA:CPU computed the weight gradient as
    [n * 3 * h, rows] x [rows, d] from a transposed copy of the output gradient."""
    b, t, d, n, h = 64, 16, 96, 3, 32
    x = jax.random.normal(jax.random.key(0), (b, t, d))
    kernel = jax.random.normal(jax.random.key(1), (d, n, 3, h))
    bias = jax.random.normal(jax.random.key(2), (n, 3, h))

    def loss(kernel: jax.Array, x: jax.Array) -> jax.Array:
        return jnp.sum(jnp.sin(layers.dense(x, kernel, bias)))

    hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(kernel, x).compile().as_text()
    entry = hlo[hlo.index("\nENTRY"):]
    assert not re.findall(rf"f32\[{n * 3 * h},{b * t}\]", hlo)
    assert not re.findall(r"= \S+ (?:copy|transpose)\(", entry)


def test_vocabulary_head_gradient_is_not_copied_transposed():
    """The caption head's weight gradient contracts the [rows, vocab] logit gradient over rows;
    as an einsum XLA:CPU first copied that gradient transposed to [vocab, rows] (15% of the demo
    CoCa step); as `layers.dense` it reads it in place."""
    b, t, d, v = 8, 16, 32, 256
    x = jax.random.normal(jax.random.key(0), (b, t, d))
    head = jax.random.normal(jax.random.key(1), (d, v))
    ids = jax.random.randint(jax.random.key(2), (b, t - 1), 0, v)

    def loss(head: jax.Array, x: jax.Array) -> jax.Array:
        logp = jax.nn.log_softmax(layers.dense(x, head)[:, :-1], axis=-1)
        return -jnp.take_along_axis(logp, ids[..., None], axis=-1).sum()

    hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(head, x).compile().as_text()
    transposed = re.findall(rf"f32\[{v},{b * t}\]|f32\[{v},{b},{t}\]\{{0,2,1\}}", hlo)
    assert not transposed, transposed


@pytest.mark.parametrize("d, n, transposed", [(48, 16, True), (16, 40, False)])
def test_weight_gradient_form_follows_the_width_rule(d, n, transposed):
    """dense's kernel gradient equals x^T g in either form: with 2n <= d <= 768 computed as
    (g^T x)^T (a dot writing [n, d]), else as x^T g (a dot writing [d, n])."""
    rng = np.random.default_rng(4)
    x, g = rng.normal(size=(64, d)), rng.normal(size=(64, n))
    kernel = jnp.asarray(rng.normal(size=(d, n)), jnp.float32)
    grad = jax.jit(lambda k, x, g: jax.vjp(lambda k: layers.dense(x, k), k)[1](g)[0])
    args = (kernel, jnp.asarray(x, jnp.float32), jnp.asarray(g, jnp.float32))
    np.testing.assert_allclose(grad(*args), x.T @ g, rtol=1e-5, atol=1e-4)
    hlo = grad.lower(*args).compile().as_text()
    outputs = re.findall(r"= f32\[(\d+),(\d+)\]\S* dot\(", hlo)
    assert outputs == ([(str(n), str(d))] if transposed else [(str(d), str(n))])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_remat_dots_policy_still_saves_dense_outputs(dtype, capsys):
    """dense's hand-written backward (CPU) leaves its forward matmul visible to remat: the
    "dots" policy saves both layers' matmul outputs instead of recomputing them."""
    x, w1, w2 = (jnp.ones(s, dtype) for s in ((8, 4), (4, 12), (12, 4)))

    def mlp(x: jax.Array, w1: jax.Array, w2: jax.Array) -> jax.Array:
        return jnp.sum(jnp.sin(layers.dense(jnp.tanh(layers.dense(x, w1)), w2)))

    print_saved_residuals(jax.checkpoint(mlp, policy=stacked.remat_policy("dots")), x, w1, w2)
    saved = capsys.readouterr().out.splitlines()
    dots = sorted(line.split()[0] for line in saved if "output of dot_general" in line)
    assert dots == ["f32[8,12]", "f32[8,4]"]


def test_bfloat16_dense_accumulates_in_float32_forward_and_backward():
    """dense on bfloat16 operands (on CPU: float32-result matmuls with a hand-written backward)
    equals the exact sums of the bfloat16 values rounded once to bfloat16, for the output and
    all 3 gradients."""
    rng = np.random.default_rng(3)
    bf16 = jnp.bfloat16
    x, kernel, bias = (jnp.asarray(rng.normal(size=s), bf16) for s in ((2, 5, 6), (6, 3, 4), (3, 4)))
    cotangent = jnp.asarray(rng.normal(size=(2, 5, 3, 4)), bf16)
    y, vjp = jax.vjp(layers.dense, x, kernel, bias)
    dx, dkernel, dbias = vjp(cotangent)
    xf, kf, bf, gf = (np.asarray(a, np.float64) for a in (x, kernel, bias, cotangent))
    for got, want in [(y, np.einsum("btd,dnh->btnh", xf, kf) + bf),
                      (dx, np.einsum("btnh,dnh->btd", gf, kf)),
                      (dkernel, np.einsum("btd,btnh->dnh", xf, gf)),
                      (dbias, gf.sum((0, 1)))]:
        assert got.dtype == bf16
        # Rounded once to bfloat16: at most half an ulp (2^-8 relative), plus the float32 sum
        # of <= 10 products (~1e-6).
        np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=2 ** -8, atol=1e-5)


def _tiny_step(config, **optimizer):
    """(jitted train step, float32 state of random weights, a batch) for the tiny test config
    on one device: the optimizer state comes from the abstract layout, no init to compile."""
    from vlmjax.parallel.mesh import batch_sharding, make_mesh, replicated
    from vlmjax.train.loop import _step_spec
    from vlmjax.train.state import state_layout
    from vlmjax.train.step import jit_train_step

    config.optimizer.update(optimizer)
    config.train.batch_size = 8
    config.mesh.data = 1  # one device: what these tests check does not depend on the mesh
    cfg = config.to_dict()
    mesh = make_mesh(cfg["mesh"], jax.devices()[:1])
    layout = state_layout(cfg, 40, 6, mesh)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda a: rng.normal(0, 0.1, a.shape).astype(np.float32),
                          layout.abstract["params"])
    opt_state = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), layout.abstract["opt_state"])
    state = {"step": np.int32(0), "params": params, "opt_state": opt_state}
    host = {"image": rng.integers(0, 256, (8, 28, 28, 1), dtype=np.uint8),
            "text": rng.integers(1, 40, (8, 6)).astype(np.int32),
            "text_mask": np.ones((8, 6), bool), "label": np.arange(8, dtype=np.int32)}
    sharding = batch_sharding(mesh, cfg["sharding_rules"])
    batch = {k: jax.device_put(v, sharding) for k, v in host.items()}
    step = jit_train_step(_step_spec(cfg, layout, mesh), layout.sharding, sharding, replicated(mesh))
    return step, layout, state, batch


def test_bfloat16_step_updates_float32_master_weights(tiny_config):
    """An update far below bfloat16's resolution still moves the float32 parameters."""
    tiny_config.model.dtype = "bfloat16"
    step, layout, before, batch = _tiny_step(tiny_config, lr=1e-5, schedule="constant",
                                             warmup_steps=0, weight_decay=0.0)
    state, metrics = step(jax.device_put(before, layout.sharding), batch)
    assert np.isfinite(float(metrics["loss"]))
    floats = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)]
    assert {x.dtype for x in floats} == {jnp.dtype(jnp.float32)}  # params and Adam moments
    # Adam's first step moves each weight by about lr = 1e-5, far below bfloat16's spacing
    # (2^-8 relative, ~4e-4 at these magnitudes): only float32 weights record it.
    change = np.abs(np.asarray(state["params"]["image"]["patch_embed"])
                    - before["params"]["image"]["patch_embed"])
    assert 0 < change.max() < 1e-4 and np.median(change) > 1e-6


def test_skipped_update_keeps_the_state_and_the_step_copies_no_state(tiny_config):
    """A non-finite loss leaves parameters and optimizer state bit-identical (the step still
    counts), a finite one updates them; and the compiled step updates the donated state in
    place: no copy of any state array (a select between old and new state made XLA copy the
    whole state on every step)."""
    step, layout, host, batch = _tiny_step(tiny_config, lr=1e-3, schedule="constant",
                                           warmup_steps=0)
    state = jax.device_put(host, layout.sharding)
    hlo = step.lower(state, batch).compile().as_text()
    entry = hlo[hlo.index("\nENTRY"):]
    arrays = {name for name, shape in re.findall(r"%(\S+) = (\S+) parameter\(", entry)
              if not shape.startswith(("s32[]", "f32[]"))}  # the step counters may be copied
    copied = [p for p in re.findall(r"= \S+ copy\(%([^)]+)\)", entry) if p in arrays]
    assert not copied, copied[:5]

    poisoned = jax.tree.map(np.copy, host)
    poisoned["params"]["image"]["patch_embed"][0, 0, 0, 0] = np.nan  # NaN loss and gradients
    state, metrics = step(jax.device_put(poisoned, layout.sharding), batch)
    assert int(metrics["update_skipped"]) == 1 and int(state["step"]) == 1
    for key in ("params", "opt_state"):
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b),
                     state[key], poisoned[key])

    state, metrics = step(jax.device_put(host, layout.sharding), batch)
    assert int(metrics["update_skipped"]) == 0 and int(state["step"]) == 1
    moved = np.abs(np.asarray(state["params"]["text_proj"]["kernel"])
                   - host["params"]["text_proj"]["kernel"])
    assert 0 < moved.max() <= 1.1e-3  # Adam's first step: about lr per weight
    moments = [np.asarray(x) for x in jax.tree.leaves(state["opt_state"])
               if jnp.issubdtype(x.dtype, jnp.floating)]
    assert all(np.any(m != 0) for m in moments if m.size > 1)  # Adam's mu and nu were updated


def test_compilation_cache_default_keeps_a_configured_cache_and_can_be_disabled(
        tmp_path, monkeypatch):
    original = jax.config.jax_compilation_cache_dir
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    try:
        jax.config.update("jax_compilation_cache_dir", None)
        monkeypatch.setenv(compilation_cache.DISABLE_ENV, "1")
        assert compilation_cache.enable_compilation_cache() is None
        assert not jax.config.jax_compilation_cache_dir
        monkeypatch.delenv(compilation_cache.DISABLE_ENV)
        # Virtual CPU devices (these tests' 8): no persistent cache (see enable_compilation_cache).
        monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
        assert compilation_cache.enable_compilation_cache() is None
        monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=0")
        path = compilation_cache.enable_compilation_cache()
        # One cache per host class: executables compiled for other CPU features never load.
        assert path == os.path.join(str(tmp_path), "vlmjax", "jax_compilation_cache",
                                    compilation_cache.host_key())
        assert len(compilation_cache.host_key()) == 12
        assert os.path.isdir(path) and jax.config.jax_compilation_cache_dir == path
        # A cache configured by the user (JAX_COMPILATION_CACHE_DIR, jax.config) wins.
        jax.config.update("jax_compilation_cache_dir", str(tmp_path / "mine"))
        assert compilation_cache.enable_compilation_cache() == str(tmp_path / "mine")
    finally:
        jax.config.update("jax_compilation_cache_dir", original)


def _largest_fusion(hlo: str) -> int:
    """Instructions in the largest fused computation of an optimised HLO module's text."""
    sizes, current = [], None
    for line in hlo.splitlines():
        if re.match(r"^%?\S*fused\S* \(", line):
            current = 0
        elif current is not None and line.startswith("}"):
            sizes.append(current)
            current = None
        elif current is not None and " = " in line:
            current += 1
    return max(sizes)


def _encoder_backward_largest_fusion(depth: int) -> int:
    """Largest fusion of the compiled float32 backward of a pre-LN encoder of `depth`."""
    encoder = layers.Encoder(16, depth, 2, 32, "quick_gelu", rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(encoder)
    x = jax.random.normal(jax.random.key(1), (2, 5, 16))

    def loss(params: nnx.State, x: jax.Array) -> jax.Array:
        return jnp.sum(jnp.sin(nnx.merge(graphdef, params)(x).astype(jnp.float32)))

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    return _largest_fusion(grad.lower(params, x).compile().as_text())


def test_residual_stream_gradient_is_materialised_once_per_block():
    """The residual stream's gradient is a chain of element-wise ops through every block;
    with autodiff's LayerNorm backward XLA:CPU fused the whole chain into each of its
    consumers (the largest fusion grew with depth, 141 -> 525 instructions from depth 2 to 8:
    every block recomputed the backward of all later blocks). LayerNorm's written-out backward
    ends the chain at every norm, so the largest fusion does not grow with depth (33 at both;
    in bfloat16 the chain did not form with either backward)."""
    shallow = _encoder_backward_largest_fusion(2)
    deep = _encoder_backward_largest_fusion(8)
    assert deep <= shallow + 8, (shallow, deep)
