"""End-to-end training on a synthetic dataset over 8 devices: files, results, LiT, SigLIP."""

import glob
import json
import os
import shutil

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from vlmjax.errors import CheckpointError, ConfigError
from vlmjax.evaluate import evaluate
from vlmjax.train.loop import train

# `trained_run` (conftest): a tiny CLIP trained 40 steps, shared with the transfer tests.


def _params_at(workdir: str, step: int) -> dict:
    path = os.path.join(workdir, "checkpoints", str(step), "state")
    return ocp.StandardCheckpointer().restore(path)["params"]


def test_results_json_and_accuracy(trained_run):
    _, workdir, results = trained_run
    with open(os.path.join(workdir, "results.json")) as f:
        on_disk = json.load(f)
    assert on_disk == results
    assert on_disk["step"] == 40
    metrics = on_disk["evals"]["zeroshot/fashion_mnist"]
    assert set(metrics) == {"acc1", "acc5", "mean_per_class_recall"}
    assert metrics["acc1"] > 0.5  # chance is 0.1; the synthetic classes are easy


def test_metrics_logs_checkpoints_and_plots(trained_run):
    _, workdir, _ = trained_run
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert train_rows[-1]["loss"] < train_rows[0]["loss"]
    for key in ("learning_rate", "grad_norm", "images_per_second", "logit_scale"):
        assert np.isfinite(train_rows[-1][key])
    assert [r["step"] for r in rows if "zeroshot/fashion_mnist/acc1" in r] == [20, 40]
    assert glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))
    assert os.path.getsize(os.path.join(workdir, "curves.png")) > 1000
    # Saved every 10 steps, the last 3 kept.
    steps = [s for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit()]
    assert sorted(map(int, steps)) == [20, 30, 40]
    with open(os.path.join(workdir, "checkpoints", "LATEST")) as f:
        assert f.read().strip() == "40"
    assert os.path.isfile(os.path.join(workdir, "tokenizer", "tokenizer_spec.json"))
    assert os.path.isfile(os.path.join(workdir, "config.json"))


def test_standalone_evaluate_reproduces_training_results(trained_run):
    config, workdir, results = trained_run
    again = evaluate(config, workdir)
    assert again["step"] == 40
    for key, value in results["evals"]["zeroshot/fashion_mnist"].items():
        assert again["evals"]["zeroshot/fashion_mnist"][key] == pytest.approx(value, abs=1e-6)
    earlier = evaluate(config, workdir, step=30)
    assert earlier["step"] == 30


def test_rerunning_with_other_training_settings_fails_and_keeps_the_config(trained_run, tmp_path):
    config, trained, _ = trained_run
    workdir = str(tmp_path / "run")
    shutil.copytree(trained, workdir)
    with open(os.path.join(workdir, "config.json")) as f:
        saved = f.read()
    changed = ml_collections.ConfigDict(config.to_dict())
    changed.model.embed_dim = 32
    changed.optimizer.lr = 1e-3
    with pytest.raises(ConfigError, match=r"model\.embed_dim \(16 -> 32\).*optimizer\.lr"):
        train(changed, workdir)
    with open(os.path.join(workdir, "config.json")) as f:
        assert f.read() == saved  # the run's own config is left as it was
    # Without a config.json to compare with, the checkpoint itself names the parameter.
    os.remove(os.path.join(workdir, "config.json"))
    with pytest.raises(CheckpointError, match=r"params/image_proj/kernel has shape \(16, 16\) but "
                                              r"the config's model needs \(16, 32\)"):
        train(changed, workdir)
    assert not os.path.exists(os.path.join(workdir, "config.json"))


def test_a_step_clamps_the_logit_scale(tiny_config):
    """From a temperature above the clamp, one step brings it back to log(max_logit_scale).

    One Adam step moves it by about lr = 3e-3, far less than the 1.0 it starts above the clamp,
    so only the clamp can bring it there; min() is exact, so it lands on float32(log(100))."""
    from vlmjax.parallel.mesh import batch_sharding, make_mesh, replicated
    from vlmjax.train.loop import _step_spec
    from vlmjax.train.state import state_layout
    from vlmjax.train.step import jit_train_step

    config = tiny_config
    config.train.batch_size = 8
    config.mesh.data = 1  # one device: the clamp does not depend on the mesh, compiling does
    cfg = config.to_dict()
    ceiling = np.float32(np.log(cfg["model"]["max_logit_scale"]))
    mesh = make_mesh(cfg["mesh"], jax.devices()[:1])
    layout = state_layout(cfg, 40, 6, mesh)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda a: rng.normal(0, 0.1, a.shape).astype(np.float32),
                          layout.abstract["params"])
    params["logit_scale"] = ceiling + np.float32(1.0)
    opt_state = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), layout.abstract["opt_state"])
    state = jax.device_put({"step": np.int32(0), "params": params, "opt_state": opt_state},
                           layout.sharding)
    host = {"image": rng.integers(0, 256, (8, 28, 28, 1), dtype=np.uint8),
            "text": rng.integers(1, 40, (8, 6)).astype(np.int32),
            "text_mask": np.ones((8, 6), bool), "label": np.arange(8, dtype=np.int32)}
    sharding = batch_sharding(mesh, cfg["sharding_rules"])
    batch = {k: jax.device_put(v, sharding) for k, v in host.items()}
    step = jit_train_step(_step_spec(cfg, layout, mesh), layout.sharding, sharding, replicated(mesh))
    state, metrics = step(state, batch)
    assert int(metrics["update_skipped"]) == 0
    assert float(metrics["logit_scale"]) == pytest.approx(np.exp(ceiling + 1.0), rel=1e-6)  # was used
    assert np.asarray(state["params"]["logit_scale"]) == ceiling


def test_lit_locked_image_tower_does_not_move(tiny_config, tmp_path):
    tiny_config.train.locked_tower = "image"
    tiny_config.train.num_steps = 10
    tiny_config.evals = {}
    workdir = str(tmp_path)
    train(tiny_config, workdir)
    # The same seed re-initialises the same parameters.
    from vlmjax.parallel.mesh import make_mesh
    from vlmjax.tokenizers import load_tokenizer
    from vlmjax.train.state import model_builder, state_layout
    cfg = tiny_config.to_dict()
    tok = load_tokenizer(os.path.join(workdir, "tokenizer"))
    layout = state_layout(cfg, tok.vocab_size, 12, make_mesh(cfg["mesh"]))
    init = jax.device_get(layout.init(cfg["seed"], model_builder(cfg, tok.vocab_size, 12))["params"])
    final = _params_at(workdir, 10)
    for a, b in zip(jax.tree.leaves(init["image"]), jax.tree.leaves(final["image"]), strict=True):
        np.testing.assert_array_equal(a, b)
    moved = [not np.array_equal(a, b) for a, b in
             zip(jax.tree.leaves(init["text"]), jax.tree.leaves(final["text"]), strict=True)]
    assert all(moved)


def test_siglip_objective_trains(synthetic_data_dir, tmp_path):
    from tests.conftest import TINY_CONFIG
    from vlmjax.config import load_config_file
    config = load_config_file(TINY_CONFIG + ":siglip")
    config.data.dir = synthetic_data_dir
    config.train.num_steps = 60  # SigLIP's -10 bias init needs longer than CLIP to move off chance
    config.train.checkpoint_every = 30
    results = train(config, str(tmp_path))
    with open(os.path.join(tmp_path, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if "loss" in line]
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert "logit_bias" in rows[-1]
    assert results["evals"]["zeroshot/fashion_mnist"]["acc1"] > 0.3  # 0.445 measured; chance 0.1
