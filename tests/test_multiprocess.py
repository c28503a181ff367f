"""Two processes x 4 CPU devices (jax.distributed on 127.0.0.1) train like one process x 8."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests.conftest import REPO, TINY_CONFIG
from tests.tolerances import ambiguous_rows, dot_atol, image_tower_atol

STEPS = 4
OVERRIDES = [f"--config.train.num_steps={STEPS}", "--config.train.log_every=2",
             f"--config.train.checkpoint_every={STEPS}", "--config.optimizer.warmup_steps=1",
             "--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=-1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TPU_"))}
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
               PYTHONPATH=REPO, VLMJAX_LOG_LEVEL="WARNING")
    return env


def _command(workdir: str, data_dir: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "vlmjax.train", "--config", TINY_CONFIG, "--workdir", workdir,
            f"--config.data.dir={data_dir}", *OVERRIDES, *extra]


def _params(workdir: str) -> dict:
    import jax
    path = os.path.join(workdir, "checkpoints", str(STEPS), "state")
    checkpointer = ocp.StandardCheckpointer()
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          checkpointer.metadata(path).item_metadata.tree)
    return jax.device_get(checkpointer.restore(path, target)["params"])


@pytest.fixture(scope="module")
def runs(tmp_path_factory, synthetic_data_dir):
    single = str(tmp_path_factory.mktemp("single"))
    multi = str(tmp_path_factory.mktemp("multi"))
    port = _free_port()
    procs = [subprocess.Popen(
        _command(multi, synthetic_data_dir, "--coordinator_address", f"127.0.0.1:{port}",
                 "--num_processes", "2", "--process_id", str(i)),
        env=_env(4), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)]
    reference = subprocess.run(_command(single, synthetic_data_dir), env=_env(8), cwd=REPO,
                               capture_output=True, text=True, timeout=600)
    assert reference.returncode == 0, reference.stderr[-3000:]
    for i, proc in enumerate(procs):
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"process {i}:\n{out[-3000:]}"
    return single, multi


def test_two_processes_reach_the_single_process_parameters(runs):
    single, multi = runs
    import jax
    want, got = _params(single), _params(multi)
    for (path, w), g in zip(jax.tree_util.tree_flatten_with_path(want)[0], jax.tree.leaves(got),
                            strict=True):
        if jax.tree_util.keystr(path).endswith("['key_bias']"):
            continue  # gradient-free under softmax (see test_sharding.assert_trees_close)
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * np.abs(w).max(),
                                   err_msg=jax.tree_util.keystr(path))


def test_only_process_zero_writes_logs_and_results(runs, synthetic_data_dir):
    single, multi = runs
    with open(os.path.join(multi, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert [r["step"] for r in rows if "loss" in r] == [2, 4]  # one writer, no duplicates
    with open(os.path.join(single, "metrics.jsonl")) as f:
        want = [json.loads(line) for line in f]
    for got_row, want_row in zip(rows, want, strict=True):
        if "loss" in want_row:
            assert got_row["loss"] == pytest.approx(want_row["loss"], rel=1e-5)
    with open(os.path.join(multi, "results.json")) as f:
        results = json.load(f)
    with open(os.path.join(single, "results.json")) as f:
        reference = json.load(f)
    assert results["step"] == STEPS
    assert results["evals"].keys() == reference["evals"].keys() == {"zeroshot/fashion_mnist"}
    # Two trainings whose parameters agree to rounding, evaluated by two programs: an image's
    # prediction may differ only where its best classes are closer than the scores can move
    # (measured between the two runs' parameters, plus two programs' rounding).
    want, labels = _zeroshot_scores(single, synthetic_data_dir)
    got, _ = _zeroshot_scores(multi, synthetic_data_dir)
    model = _tiny_config(synthetic_data_dir).model.to_dict()
    atol = np.abs(got - want).max() + dot_atol(model["embed_dim"]) + image_tower_atol(model)
    top1 = ambiguous_rows(want, atol)
    ranked = -np.sort(-want, axis=1)
    classes = np.unique(labels)
    slack = {"acc1": np.mean(top1), "acc5": np.mean(ambiguous_rows(ranked[:, 4:6], atol)),
             "mean_per_class_recall": np.mean([np.mean(top1[labels == k]) for k in classes])}
    for key, value in reference["evals"]["zeroshot/fashion_mnist"].items():
        assert abs(results["evals"]["zeroshot/fashion_mnist"][key] - value) <= slack[key] + 1e-6, key


def _tiny_config(data_dir: str):
    from vlmjax.config import load_config_file
    config = load_config_file(TINY_CONFIG)
    config.data.dir = data_dir
    return config


def _zeroshot_scores(workdir: str, data_dir: str) -> tuple[np.ndarray, np.ndarray]:
    """Float64 cosines [200, 10] of a run's test images and classes, by one program for every
    run here (the library's feature extractor and zero-shot classifier on 8 devices), and the
    labels."""
    import jax

    from vlmjax.evaluators.frozen_features import FeatureExtractor
    from vlmjax.evaluators.zeroshot import ZeroShotClassification
    from vlmjax.parallel.mesh import make_mesh, replicated
    from vlmjax.tokenizers import load_tokenizer
    from vlmjax.train.eval_context import eval_context
    from vlmjax.train.state import state_layout

    cfg = _tiny_config(data_dir).to_dict()
    mesh = make_mesh(cfg["mesh"])
    tokenizer = load_tokenizer(os.path.join(workdir, "tokenizer"))
    length = cfg["tokenizer"]["context_length"]
    layout = state_layout(cfg, tokenizer.vocab_size, length, mesh)
    ctx = eval_context(cfg, layout.graphdef, tokenizer, mesh)
    params = jax.device_put(_params(workdir), replicated(mesh))
    features, labels = FeatureExtractor(ctx, 200).features(params, "fashion_mnist", "test")
    classifier = ZeroShotClassification({"dataset": "fashion_mnist", "split": "test"}, ctx).classifier(params)
    return np.asarray(features, np.float64) @ np.asarray(classifier, np.float64).T, labels
