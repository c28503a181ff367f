"""Memory options of the towers: remat policies, scan over layers, and the bf16 compute path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from vlmjax.config import base_config
from vlmjax.config.validate import validate
from vlmjax.errors import ConfigError
from vlmjax.models import layers
from vlmjax.models.stacked import REMAT_POLICIES, stack_layer_params, unstack_layer_params
from vlmjax.objectives.registry import get_objective
from vlmjax.parallel.mesh import logical_axes_of, make_mesh, param_shardings
from vlmjax.train.state import model_builder, state_layout

VOCAB, CTX = 50, 7


def _config(**model):
    """Tiny towers (as in configs/test/tiny_clip.py) with two layers each, so scans loop."""
    c = base_config()
    c.tokenizer.context_length = CTX
    c.optimizer.warmup_steps = 2
    c.train.num_steps = 20
    c.model.embed_dim = 16
    c.model.image.update(image_size=8, channels=3, patch_size=4, width=16, depth=2, heads=2,
                         mlp_dim=32)
    c.model.text.update(width=16, depth=2, heads=2, mlp_dim=32)
    c.model.update(model)
    return c


def _graphdef_and_shapes(config):
    """The model's graph and its parameters' shapes, traced abstractly (nothing is compiled)."""
    build = model_builder(config, VOCAB, CTX)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: build(nnx.Rngs(0))))
    return graphdef, nnx.to_pure_dict(state)


def _random_params(shapes, seed=0):
    """Float32 params of these shapes, random biases and norms included.

    Random values, not the model's initialisers: compiling those on CPU costs more than all the
    checks here (tests/test_models.py covers the initialised models).
    """
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "scale":  # LayerNorm gains
            return jnp.asarray(1 + 0.1 * rng.standard_normal(leaf.shape), jnp.float32)
        if name == "logit_scale":
            return jnp.float32(np.log(1 / 0.07))
        std = 0.5 * np.prod(leaf.shape[:-1]) ** -0.5 if len(leaf.shape) > 1 else 0.05
        return jnp.asarray(std * rng.standard_normal(leaf.shape), jnp.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def _batch():
    images = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
    ids = jax.random.randint(jax.random.key(2), (4, CTX), 1, VOCAB)
    mask = jnp.arange(CTX)[None] < jnp.array([[2], [7], [4], [5]])
    return images, ids, mask


def _forward(graphdef, params, batch):
    images, ids, mask = batch
    return nnx.merge(graphdef, params)({"image": images, "text": ids, "text_mask": mask})


def _loss(graphdef, params, batch):
    """The CLIP loss of the model outputs: a scalar that depends on both towers and the scale."""
    objective = get_objective("clip")
    outputs = _forward(graphdef, params, batch)
    return objective.loss(outputs, dict(objective.options))[0], outputs


# No LLVM optimisation: halves the CPU compile time, which is what these tests spend.
FAST_COMPILE = {"xla_backend_optimization_level": 0}
# One compiled program per model graph: (loss, outputs), grads.
_run = jax.jit(jax.value_and_grad(_loss, argnums=1, has_aux=True), static_argnums=0,
               compiler_options=FAST_COMPILE)


def _assert_trees_close(a, b, atol, rtol=0.0):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, atol=atol, rtol=rtol, err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def unrolled():
    """The default (unrolled, no remat, float32) model: graph, params, batch, its loss/grads."""
    graphdef, shapes = _graphdef_and_shapes(_config())
    params = _random_params(shapes)
    batch = _batch()
    (loss, outputs), grads = _run(graphdef, params, batch)
    return dict(graphdef=graphdef, params=params, batch=batch, loss=loss, outputs=outputs,
                grads=grads)


def test_stack_and_unstack_layer_params(unrolled):
    params = unrolled["params"]
    _, scanned_shapes = _graphdef_and_shapes(_config(scan_layers=True))
    stacked = stack_layer_params(params)
    # The mapping produces exactly the scanned model's tree: same paths, shapes and dtypes.
    assert jax.tree.map(jnp.shape, stacked) == jax.tree.map(jnp.shape, scanned_shapes)
    assert stacked["image"]["encoder"]["block"]["mlp"]["fc1"].shape == (2, 16, 32)
    assert "layers" not in stacked["text"]["encoder"]
    np.testing.assert_array_equal(stacked["text"]["encoder"]["block"]["attn"]["out"][1],
                                  params["text"]["encoder"]["layers"][1]["attn"]["out"])
    _assert_trees_close(unstack_layer_params(stacked), params, atol=0)
    # Checkpoint trees may carry the layer index as a string key.
    as_strings = {**params["image"]["encoder"], "layers": {
        str(i): layer for i, layer in params["image"]["encoder"]["layers"].items()}}
    _assert_trees_close(stack_layer_params(as_strings), stacked["image"]["encoder"], atol=0)


def test_scanned_model_matches_unrolled_outputs_and_gradients(unrolled):
    graphdef, _ = _graphdef_and_shapes(_config(scan_layers=True))
    (loss, outputs), grads = _run(graphdef, stack_layer_params(unrolled["params"]), unrolled["batch"])
    for key in ("image_embed", "text_embed"):
        np.testing.assert_allclose(outputs[key], unrolled["outputs"][key], atol=1e-5)
    np.testing.assert_allclose(loss, unrolled["loss"], atol=1e-5, rtol=1e-5)
    # CLIP-loss gradients reach ~10, so float32 reassociation needs a relative tolerance too.
    _assert_trees_close(unstack_layer_params(grads), unrolled["grads"], atol=1e-5, rtol=1e-5)


def _equations(jaxpr):
    """Every equation of a jaxpr, those of sub-jaxprs (jit, scan, remat, custom_jvp) included."""
    for eqn in jaxpr.eqns:
        yield eqn
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _equations(inner)


def _remat_policies(graphdef, params, batch) -> list:
    """The policy of every checkpoint (remat) equation in the loss's jaxpr."""
    jaxpr = jax.make_jaxpr(lambda p: _loss(graphdef, p, batch)[0])(params).jaxpr
    return [eqn.params["policy"] for eqn in _equations(jaxpr) if "policy" in eqn.params]


@pytest.mark.parametrize("policy", ["full", "dots", "dots_no_batch"])
def test_every_remat_policy_checkpoints_each_block_of_the_model(unrolled, policy):
    params, batch = unrolled["params"], unrolled["batch"]
    assert _remat_policies(unrolled["graphdef"], params, batch) == []
    graphdef, _ = _graphdef_and_shapes(_config(remat=policy))
    assert _remat_policies(graphdef, params, batch) == [REMAT_POLICIES[policy]] * 4  # 2 + 2 blocks
    graphdef, _ = _graphdef_and_shapes(_config(remat=policy, scan_layers=True))
    # Scanned: the scan body (one block) is checkpointed, once per tower.
    assert _remat_policies(graphdef, stack_layer_params(params), batch) == [REMAT_POLICIES[policy]] * 2


def _encoder_graphdef(remat: str, scan: bool):
    width, depth, heads, mlp_dim = 16, 2, 2, 32
    return nnx.split(nnx.eval_shape(lambda: layers.Encoder(
        width, depth, heads, mlp_dim, "gelu", rngs=nnx.Rngs(0), remat=remat, scan=scan)))


def _encoder_loss(graphdef, params, x, mask):
    """A scalar of an encoder's output; the mask exercises arguments passed through remat/scan."""
    return jnp.sum(jnp.sin(nnx.merge(graphdef, params)(x, mask=mask)))


_encoder_run = jax.jit(jax.value_and_grad(_encoder_loss, argnums=1), static_argnums=0,
                       compiler_options=FAST_COMPILE)


@pytest.fixture(scope="module")
def encoder_reference():
    """Loss and gradients of an unrolled and a scanned encoder without remat, same parameters."""
    _, shapes = _encoder_graphdef("none", scan=False)
    params = _random_params(nnx.to_pure_dict(shapes), seed=3)
    x = jax.random.normal(jax.random.key(4), (2, 5, 16))
    mask = jnp.arange(5)[None] < jnp.array([[3], [5]])
    ref = {}
    for scan in (False, True):
        scan_params = stack_layer_params(params) if scan else params
        ref[scan] = scan_params, _encoder_run(_encoder_graphdef("none", scan)[0], scan_params, x, mask)
    return ref, x, mask


# Every policy unrolled; scanned with one policy here (the bf16 test runs scan + "dots" end to end).
@pytest.mark.parametrize("policy,scan", [("full", False), ("dots", False), ("dots_no_batch", False),
                                         ("full", True)])
def test_every_remat_policy_gives_the_same_loss_and_gradients(encoder_reference, policy, scan):
    ref, x, mask = encoder_reference
    params, (want_loss, want_grads) = ref[scan]
    loss, grads = _encoder_run(_encoder_graphdef(policy, scan)[0], params, x, mask)
    np.testing.assert_allclose(loss, want_loss, atol=1e-6, rtol=1e-6)
    _assert_trees_close(grads, want_grads, atol=1e-6, rtol=1e-6)


def test_scanned_encoder_initialises_every_layer_independently():
    init = jax.jit(lambda: nnx.to_pure_dict(nnx.state(layers.Encoder(
        8, 2, 2, 16, "gelu", rngs=nnx.Rngs(0), scan=True))), compiler_options=FAST_COMPILE)
    fc1 = init()["block"]["mlp"]["fc1"]
    assert fc1.shape == (2, 8, 16)
    limit = np.sqrt(6 / (8 + 16))  # xavier_uniform of each layer's (8, 16) matrix
    assert np.abs(fc1).max() <= limit and np.all(np.std(fc1, axis=(1, 2)) > limit / 3)
    assert not np.allclose(fc1[0], fc1[1])


def test_scanned_parameters_have_a_leading_layers_axis_and_shard():
    config = _config(scan_layers=True, remat="full")
    config.mesh.update(data=1, fsdp=8, tensor=1)
    abstract = nnx.eval_shape(lambda: model_builder(config, VOCAB, CTX)(nnx.Rngs(0)))
    axes = logical_axes_of(nnx.state(abstract))
    shapes = nnx.to_pure_dict(nnx.state(abstract))
    for tower in ("image", "text"):
        block_axes = axes[tower]["encoder"]["block"]
        assert tuple(block_axes["mlp"]["fc1"]) == ("layers", "embed", "mlp")
        assert tuple(block_axes["attn"]["query"]) == ("layers", "embed", "heads", "kv")
        assert tuple(block_axes["ln_attn"]["scale"]) == ("layers", "embed")
        block_shapes = jax.tree.leaves(shapes[tower]["encoder"]["block"])
        for leaf_axes, leaf in zip(jax.tree.leaves(block_axes, is_leaf=lambda x: isinstance(x, tuple)),
                                   block_shapes, strict=True):
            assert leaf_axes[0] == "layers" and len(leaf_axes) == len(leaf.shape)
            assert leaf.shape[0] == 2
    assert tuple(axes["image_proj"]["kernel"]) == ("embed", "joint")  # outside the stack: unchanged

    mesh = make_mesh(config.mesh)
    shardings = param_shardings(axes, mesh, config.sharding_rules)
    assert shardings["image"]["encoder"]["block"]["mlp"]["fc1"].spec == PartitionSpec(
        None, "fsdp", "tensor")
    layout = state_layout(config, VOCAB, CTX, mesh)
    out = layout.sharding["params"]["text"]["encoder"]["block"]["attn"]["out"]
    assert out.spec == PartitionSpec(None, "tensor", None, "fsdp")
    assert layout.abstract["params"]["text"]["encoder"]["block"]["attn"]["out"].shape == (2, 2, 8, 16)
    # Adam moments follow the stacked parameters' layout.
    moments = [s for s in jax.tree.leaves(layout.sharding["opt_state"])
               if isinstance(s, NamedSharding) and s.spec == out.spec]
    assert len(moments) >= 2


def _input_dtypes(jaxpr, primitive: str) -> set[str]:
    return {str(v.aval.dtype) for eqn in _equations(jaxpr) if eqn.primitive.name == primitive
            for v in eqn.invars}


@pytest.mark.parametrize("scan", [False, True], ids=["unrolled", "scanned"])
def test_bfloat16_computes_in_bfloat16_with_float32_norms_and_loss(unrolled, scan):
    batch = unrolled["batch"]
    graphdef, shapes = _graphdef_and_shapes(_config(dtype="bfloat16", scan_layers=scan))
    assert {x.dtype for x in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.float32)}  # master weights
    params = stack_layer_params(unrolled["params"]) if scan else unrolled["params"]

    def tokens(p):
        model = nnx.merge(graphdef, p)
        images, ids, mask = batch
        return (model.image(images.astype(jnp.bfloat16))["tokens"],
                model.text(ids, mask)["tokens"])

    assert {t.dtype for t in jax.eval_shape(tokens, params)} == {jnp.dtype(jnp.bfloat16)}
    # Every matmul of both towers (patches, attention, MLP, projections) takes bf16 operands,
    forward = jax.make_jaxpr(lambda p: _forward(graphdef, p, batch))(params).jaxpr
    assert _input_dtypes(forward, "dot_general") == {"bfloat16"}
    # LayerNorm and l2_normalize take their rsqrt in float32, the loss its logits too.
    loss = jax.make_jaxpr(lambda p: _loss(graphdef, p, batch)[0])(params).jaxpr
    assert _input_dtypes(loss, "rsqrt") == {"float32"}
    assert _input_dtypes(loss, "dot_general") == {"bfloat16", "float32"}
    fp32 = jax.make_jaxpr(lambda p: _forward(unrolled["graphdef"], p, batch))(unrolled["params"])
    assert _input_dtypes(fp32.jaxpr, "dot_general") == {"float32"}  # (the check can tell)


def test_bfloat16_runs_scanned_with_remat_and_gives_float32_gradients(unrolled):
    graphdef, _ = _graphdef_and_shapes(_config(dtype="bfloat16", scan_layers=True, remat="dots"))
    params = stack_layer_params(unrolled["params"])
    (loss, outputs), grads = _run(graphdef, params, unrolled["batch"])
    for key in ("image_embed", "text_embed"):
        assert outputs[key].dtype == jnp.float32
        np.testing.assert_allclose(np.linalg.norm(outputs[key], axis=1), 1, rtol=1e-5)
        cosine = np.sum(np.asarray(outputs[key]) * np.asarray(unrolled["outputs"][key]), axis=1)
        assert cosine.min() > 0.99, (key, cosine)
    assert loss.dtype == jnp.float32 and np.isfinite(loss)
    np.testing.assert_allclose(loss, unrolled["loss"], rtol=5e-2)
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert g.dtype == jnp.float32 and np.all(np.isfinite(g)), jax.tree_util.keystr(path)
    # Close to the float32 gradients in direction (bf16 has 8 bits of mantissa).
    flat = np.concatenate([np.ravel(g) for g in jax.tree.leaves(unstack_layer_params(grads))])
    want = np.concatenate([np.ravel(g) for g in jax.tree.leaves(unrolled["grads"])])
    assert flat @ want / np.linalg.norm(flat) / np.linalg.norm(want) > 0.99


def test_config_validation_rejects_an_unknown_remat_policy():
    config = _config(remat="everything")
    with pytest.raises(ConfigError, match=r"config\.model\.remat") as info:
        validate(config, num_devices=8)
    assert "\n" not in str(info.value) and "dots_no_batch" in str(info.value)
    assert all(repr(name) in str(info.value) for name in REMAT_POLICIES)  # the models' own list
    with pytest.raises(ValueError, match="remat must be one of"):
        layers.Encoder(16, 1, 2, 32, "gelu", rngs=nnx.Rngs(0), remat="everything")


@pytest.mark.parametrize("scan", [False, True], ids=["unrolled", "scanned"])
def test_weight_decay_reaches_exactly_the_weight_matrices(scan):
    from vlmjax.train.optimizer import decay_mask
    from vlmjax.train.param_groups import path_string
    config = _config(scan_layers=scan).to_dict()
    _, shapes = _graphdef_and_shapes(config)
    mask = decay_mask(shapes, config["optimizer"]["no_decay"])
    flat = jax.tree_util.tree_flatten_with_path(mask)[0]
    decayed = {path_string(p).split("/")[-1] for p, m in flat if m}
    kept = {path_string(p).split("/")[-1] for p, m in flat if not m}
    assert decayed == {"patch_embed", "query", "key", "value", "out", "fc1", "fc2", "kernel",
                       "token_embed"}
    assert {"query_bias", "fc1_bias", "out_bias", "patch_bias", "scale", "bias", "logit_scale",
            "pos_embed", "cls_token"} <= kept
