"""The train state's seams: non-parameter model variables (BatchNorm statistics) updated by the
step, checkpointed and resumed bit-exactly, and the step's key (FLIP patch masking)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vlmjax.models import registry as model_registry
from vlmjax.models.family import ModelFamily
from vlmjax.models.two_tower import TOWER_PATTERNS, TwoTower
from vlmjax.models.vit import kept_patches
from vlmjax.train.loop import train
from vlmjax.train.run import load_run
from vlmjax.train.step import step_key

MOMENTUM = 0.9


class NormedTwoTower(TwoTower):
    """TwoTower with a BatchNorm (no scale/bias) on the projected image features before the
    L2 normalisation: a family with model state, to prove the seam."""

    def __init__(self, model, vocab_size, context_length, *, rngs):
        super().__init__(model, vocab_size, context_length, rngs=rngs)
        self.image_norm = nnx.BatchNorm(model["embed_dim"], momentum=MOMENTUM, use_scale=False,
                                        use_bias=False, rngs=rngs)

    def encode_image(self, images, *, train=False, rng=None):
        pooled = self.image_proj(self.image(images, train=train, rng=rng)["pooled"])
        x = self.image_norm(pooled, use_running_average=not train)
        return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture
def normed_family(monkeypatch):
    family = ModelFamily(build=NormedTwoTower, towers=TOWER_PATTERNS,
                         capabilities=frozenset({"embedding"}))
    monkeypatch.setitem(model_registry.FAMILIES._entries, "normed", family)
    return family


def _config(tiny_config, steps: int):
    tiny_config.model.name = "normed"
    tiny_config.train.num_steps = steps
    tiny_config.train.checkpoint_every = 3
    tiny_config.optimizer.warmup_steps = 0
    tiny_config.optimizer.schedule = "constant"  # 3 steps then 3 more = 6 steps
    tiny_config.evals = {}
    return tiny_config


def test_batch_statistics_train_checkpoint_and_resume_bit_exactly(normed_family, tiny_config,
                                                                 tmp_path):
    straight = str(tmp_path / "straight")
    train(_config(tiny_config, 6), straight)
    resumed = str(tmp_path / "resumed")
    train(_config(tiny_config, 3), resumed)
    train(_config(tiny_config, 6), resumed)  # continues from the step-3 checkpoint
    a, b = load_run(straight, 6), load_run(resumed, 6)
    stats = jax.device_get(a.model_state["image_norm"])
    assert set(stats) == {"mean", "var"}
    assert np.abs(stats["mean"]).max() > 1e-3  # the statistics moved from their zero init
    for x, y in zip(jax.tree.leaves(jax.device_get(a.weights)),
                    jax.tree.leaves(jax.device_get(b.weights)), strict=True):
        np.testing.assert_array_equal(x, y)  # the same program twice: bit-exact


def test_the_step_updates_running_statistics_as_batchnorm_defines(normed_family, tiny_config,
                                                                  tmp_path):
    """Running mean after one step = m * 0 + (1 - m) * the batch mean of the features the step
    saw, computed here in NumPy from the initial weights and the batch."""
    from vlmjax.data.normalization import Normalization
    from vlmjax.data.prefetch import process_rows
    from vlmjax.data.registry import get_train_source
    from vlmjax.parallel.mesh import batch_sharding, make_mesh
    from vlmjax.train.state import merge_model, model_builder, state_layout
    workdir = str(tmp_path / "run")
    config = _config(tiny_config, 1)
    train(config, workdir)
    cfg = load_run(workdir, 1).config
    run = load_run(workdir, 1)
    mesh = make_mesh(cfg["mesh"])
    layout = state_layout(cfg, run.tokenizer.vocab_size, 12, mesh)
    init = layout.init(cfg["seed"], model_builder(cfg, run.tokenizer.vocab_size, 12))
    rows = process_rows(batch_sharding(mesh, cfg["sharding_rules"]), cfg["train"]["batch_size"])
    batch = next(get_train_source(cfg["data"]).build(cfg, run.tokenizer, rows, 0, 1))
    model = merge_model(layout.graphdef, jax.device_get(init["params"]),
                        jax.device_get(init["model_state"]))
    images = Normalization.from_config(cfg["data"])(jnp.asarray(batch["image"]))
    pooled = np.asarray(model.image_proj(model.image(images)["pooled"]), np.float64)
    expected = (1 - MOMENTUM) * pooled.mean(axis=0)
    got = np.asarray(jax.device_get(run.model_state["image_norm"]["mean"]))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_patch_masking_keeps_a_random_subset_in_training_only():
    from vlmjax.config import base_config
    c = base_config().model.to_dict()
    c["embed_dim"] = 8
    c["image"].update(image_size=16, channels=1, patch_size=4, width=8, depth=1, heads=2, mlp_dim=16,
                      pool="gap", mask_ratio=0.75)
    c["text"].update(width=8, depth=1, heads=2, mlp_dim=16)
    model = TwoTower(c, 20, 4, rngs=nnx.Rngs(0))
    images = jax.random.normal(jax.random.key(1), (3, 16, 16, 1))
    assert kept_patches(16, 0.75) == 4
    tokens = lambda train, key: model.image(images, train=train, rng=key)["tokens"]  # noqa: E731
    assert tokens(False, None).shape == (3, 16, 8)  # evaluation sees every patch
    a = tokens(True, step_key(0, jnp.int32(5)))
    assert a.shape == (3, 4, 8)
    np.testing.assert_array_equal(a, tokens(True, step_key(0, jnp.int32(5))))  # key -> same subset
    assert not np.array_equal(a, tokens(True, step_key(0, jnp.int32(6))))  # another step, another
    with pytest.raises(ValueError, match="rng"):
        tokens(True, None)


def test_masked_patches_are_the_unmasked_model_on_the_kept_positions():
    """With gap pooling and no attention between the kept tokens and the dropped ones, the masked
    forward equals the full forward of an image whose dropped patches were never there: check it
    against the encoder run on the gathered tokens directly."""
    from vlmjax.config import base_config
    c = base_config().model.to_dict()
    c["image"].update(image_size=8, channels=1, patch_size=4, width=8, depth=1, heads=2, mlp_dim=16,
                      pool="gap", mask_ratio=0.5)
    c["text"].update(width=8, depth=1, heads=2, mlp_dim=16)
    c["embed_dim"] = 8
    model = TwoTower(c, 20, 4, rngs=nnx.Rngs(0))
    images = jax.random.normal(jax.random.key(2), (2, 8, 8, 1))
    key = step_key(3, jnp.int32(1))
    masked = model.image(images, train=True, rng=key)["tokens"]
    vit = model.image
    x = jnp.einsum("bnpqc,pqcd->bnd", vit.patchify(images), vit.patch_embed[...]) + vit.patch_bias[...]
    x = x + vit.pos_embed[...]
    kept = jnp.sort(jax.lax.top_k(jax.random.uniform(key, (2, 4)), 2)[1], axis=-1)
    x = jnp.take_along_axis(x, kept[:, :, None], axis=1)
    np.testing.assert_allclose(masked, vit.ln_post(vit.encoder(x)), rtol=1e-5, atol=1e-6)
