"""Sharded training equals single-device training; FSDP shards what is big; resharded restores."""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import REPO, TINY_CONFIG
from tests.tolerances import accuracy_slack, dot_atol, image_tower_atol
from vlmjax.config import load_config_file
from vlmjax.parallel.mesh import batch_sharding, make_mesh
from vlmjax.train.checkpoint import Checkpointer
from vlmjax.train.loop import _step_spec
from vlmjax.train.state import model_builder, state_layout
from vlmjax.train.step import jit_train_step, loss_and_grads, model_outputs, step_key

VOCAB, CONTEXT, BATCH = 64, 12, 32
MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 8, 1)]


def _config(objective: str = "clip", mesh: tuple[int, int, int] = (1, 1, 1)) -> dict:
    if objective == "coca":
        config = load_config_file(os.path.join(REPO, "configs", "test", "tiny_coca.py"))
    elif objective == "filip":  # with a temperature per direction
        config = load_config_file(os.path.join(REPO, "configs", "test", "tiny_filip.py:per_direction"))
    else:
        config = load_config_file(f"{TINY_CONFIG}:{objective}")
    config.mesh.update(data=mesh[0], fsdp=mesh[1], tensor=mesh[2])
    return config.to_dict()


def _batches(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        lengths = rng.integers(1, CONTEXT + 1, size=BATCH)
        out.append({
            "image": rng.integers(0, 256, size=(BATCH, 28, 28, 1)).astype(np.uint8),
            "text": rng.integers(0, VOCAB, size=(BATCH, CONTEXT)).astype(np.int32),
            "text_mask": np.arange(CONTEXT)[None] < lengths[:, None],
        })
    return out


def _setup(cfg: dict, devices: list) -> tuple:
    mesh = make_mesh(cfg["mesh"], devices)
    layout = state_layout(cfg, VOCAB, CONTEXT, mesh)
    spec = _step_spec(cfg, layout, mesh)
    sharding = batch_sharding(mesh, cfg["sharding_rules"])
    return mesh, layout, spec, sharding


def _train(cfg: dict, devices: list, steps: int = 3) -> tuple[list[float], dict]:
    """Losses of `steps` updates from the seed's initial state, and the final parameters."""
    mesh, layout, spec, sharding = _setup(cfg, devices)
    step = jit_train_step(spec, layout.sharding, sharding, jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec()))
    state = layout.init(cfg["seed"], model_builder(cfg, VOCAB, CONTEXT))
    losses = []
    for batch in _batches(steps):
        state, metrics = step(state, jax.device_put(batch, sharding))
        losses.append(float(metrics["loss"]))
    return losses, jax.device_get(state["params"])


def assert_trees_close(got: dict, want: dict, rtol: float = 1e-5) -> None:
    """Every leaf equal to `rtol` relative to the leaf's largest magnitude.

    Attention key biases are the exception: softmax is invariant to them, so their exact
    gradient is zero and Adam turns rounding noise (~1e-12) into ~1e-7 moves from their zero
    init in both runs. For them the test is that they stay at zero.
    """
    flat_want = jax.tree_util.tree_flatten_with_path(want)[0]
    for (path, w), g in zip(flat_want, jax.tree.leaves(got), strict=True):
        if jax.tree_util.keystr(path).endswith("['key_bias']") and rtol:
            assert np.abs(g).max() < 1e-5 and np.abs(w).max() < 1e-5
            continue
        scale = max(float(np.max(np.abs(w))), 1e-30)
        np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * scale,
                                   err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def single_device_run() -> tuple[list[float], dict]:
    return _train(_config(), jax.devices()[:1])


@pytest.mark.parametrize("mesh", MESHES, ids=lambda m: "data{}_fsdp{}_tensor{}".format(*m))
def test_sharded_training_equals_single_device(single_device_run, mesh):
    want_losses, want_params = single_device_run
    losses, params = _train(_config(mesh=mesh), jax.devices())
    np.testing.assert_allclose(losses, want_losses, rtol=1e-5)
    assert losses[-1] != losses[0]  # the parameters did move
    assert_trees_close(params, want_params)


def test_coca_on_a_3d_mesh_equals_single_device():
    want_losses, want_params = _train(_config("coca"), jax.devices()[:1])
    losses, params = _train(_config("coca", mesh=(2, 2, 2)), jax.devices())
    np.testing.assert_allclose(losses, want_losses, rtol=1e-5)
    assert_trees_close(params, want_params)


def test_fsdp_leaves_no_large_parameter_or_moment_replicated():
    config = load_config_file(TINY_CONFIG)
    config.model.image.update(variant="B/16", image_size=224, channels=3, width=0, depth=0,
                              heads=0, mlp_dim=0)
    config.model.text.update(width=512, depth=12, heads=8, mlp_dim=2048)
    config.model.embed_dim = 512
    config.mesh.update(data=1, fsdp=8, tensor=1)
    cfg = config.to_dict()
    layout = state_layout(cfg, 49408, 77, make_mesh(cfg["mesh"]))
    checked = 0
    for part in ("params", "opt_state"):
        leaves = jax.tree_util.tree_flatten_with_path(layout.abstract[part])[0]
        for path, leaf in leaves:
            nbytes = math.prod(leaf.shape) * leaf.dtype.itemsize
            if nbytes <= 2 ** 20:
                continue
            checked += 1
            shard = leaf.sharding.shard_shape(leaf.shape)
            assert math.prod(shard) * 8 == math.prod(leaf.shape), (part, jax.tree_util.keystr(path))
    assert checked > 3 * 12 * 4  # every big matrix of both towers, and both Adam moments


def test_odd_sized_parameters_stay_whole_instead_of_failing():
    config = load_config_file(TINY_CONFIG)
    config.mesh.update(data=1, fsdp=4, tensor=2)
    cfg = config.to_dict()
    layout = state_layout(cfg, 61, CONTEXT, make_mesh(cfg["mesh"]))  # 61: a prime vocabulary
    token_embed = layout.abstract["params"]["text"]["token_embed"]
    assert token_embed.shape == (61, 16)
    assert token_embed.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp")


@pytest.mark.parametrize("objective", ["clip", "siglip", "filip"])
def test_gradient_accumulation_equals_the_full_batch(objective):
    cfg = _config(objective, mesh=(8, 1, 1))
    mesh, layout, spec, sharding = _setup(cfg, jax.devices())
    params = layout.init(cfg["seed"], model_builder(cfg, VOCAB, CONTEXT))["params"]
    batch = jax.device_put(_batches(1, seed=1)[0], sharding)
    key = step_key(cfg["seed"], jnp.int32(0))
    full = jax.jit(lambda p, b: loss_and_grads(spec, p, None, b, key)[:2])
    spec4 = _step_spec({**cfg, "train": {**cfg["train"], "grad_accum_steps": 4}}, layout, mesh)
    assert spec4.grad_accum_steps == 4
    micro = jax.jit(lambda p, b: loss_and_grads(spec4, p, None, b, key)[:2])
    want_grads, want_metrics = jax.device_get(full(params, batch))
    grads, metrics = jax.device_get(micro(params, batch))
    slack = _accuracy_slack(cfg, spec, params, batch, key)
    for key in want_metrics:
        if key.endswith("_accuracy"):  # argmaxes of two programs: equal except at near-ties
            assert abs(float(metrics[key]) - float(want_metrics[key])) <= slack + 1e-6, key
        else:
            np.testing.assert_allclose(metrics[key], want_metrics[key], rtol=1e-5, err_msg=key)
    assert_trees_close(grads, want_grads)
    assert float(np.abs(grads["logit_scale"])) > 0
    if objective == "filip":
        assert float(np.abs(grads["logit_scale_t2i"])) > 0


def _accuracy_slack(cfg, spec, params, batch, key) -> float:
    """The share of rows (either direction) whose best two pair scores are closer than two
    float32 programs may place them (the towers' rounding, tests.tolerances, for both
    embeddings, plus the final dot product): only there may their argmaxes differ."""
    outputs, _ = jax.device_get(jax.jit(lambda p, b: model_outputs(spec, p, None, b, key))(
        params, batch))
    if "image_tokens" in outputs:  # FILIP: token-wise similarities (all image tokens valid)
        x = np.asarray(outputs["image_tokens"], np.float64)
        y = np.asarray(outputs["text_tokens"], np.float64)
        mask = np.asarray(jax.device_get(batch["text_mask"]), bool)
        sims = np.einsum("ikd,jrd->ijkr", x, y)
        s_image = np.where(mask[None, :, None, :], sims, -np.inf).max(3).mean(2)
        s_text = np.where(mask[None], sims.max(2), 0.0).sum(2) / mask.sum(1)  # over real tokens
        scores = (s_image, s_text.T)
    else:
        a = np.asarray(outputs["image_embed"], np.float64) @ np.asarray(outputs["text_embed"], np.float64).T
        scores = (a, a.T)
    atol = 2 * image_tower_atol(cfg["model"]) + dot_atol(cfg["model"]["embed_dim"])
    return max(accuracy_slack(s, atol) for s in scores)


def test_checkpoint_restores_onto_another_mesh(tmp_path):
    cfg = _config(mesh=(8, 1, 1))
    _, layout, _, _ = _setup(cfg, jax.devices())
    state = layout.init(cfg["seed"], model_builder(cfg, VOCAB, CONTEXT))
    with Checkpointer(str(tmp_path)) as ckpt:
        ckpt.save(3, state, {"position": 7})
    other = _config(mesh=(1, 4, 2))
    _, other_layout, _, _ = _setup(other, jax.devices())
    with Checkpointer(str(tmp_path), read_only=True) as ckpt:
        restored, data_state, step = ckpt.restore(None, other_layout.abstract)
    assert step == 3 and data_state == {"position": 7}
    fc1 = restored["params"]["image"]["encoder"]["layers"][0]["mlp"]["fc1"]
    assert fc1.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    assert_trees_close(jax.device_get(restored), jax.device_get(state), rtol=0)
