"""Everything downstream with ResNet image towers (BatchNorm statistics in the train state) and
BERT text towers, through the public entry points (`train`, `vlmjax.evaluate`): CLIP, SigLIP,
LiT and FILIP objectives; zero-shot, retrieval, linear probe, few-shot (every method, CoOp
through the text tower's token embeddings), fine-tuning and unsupervised transfer; resume
bit-exact with the BatchNorm statistics.
"""

import json
import os
import shutil

import jax
import ml_collections
import numpy as np
import pytest

from tests.conftest import REPO
from vlmjax.config import load_config_file, select
from vlmjax.evaluate import evaluate
from vlmjax.train.loop import train
from vlmjax.train.run import load_run

TINY = os.path.join(REPO, "configs", "test", "tiny_resnet.py")
TRANSFER = dict(
    linear_probe=dict(kind="linear_probe", batch_size=200),
    fewshot=dict(kind="fewshot", batch_size=200, shots=(1, 4), seeds=1, max_iter=20,
                 tip_f_epochs=2, coop_num_context=2, coop_epochs=2),
    unsupervised=dict(kind="unsupervised", batch_size=200, per_class=4, max_iter=20,
                      coop_num_context=2, coop_epochs=2),
    finetune=dict(kind="finetune", batch_size=200, steps=3, train_batch_size=32))


def _config(data_dir: str, arg: str = "clip", steps: int = 20) -> ml_collections.ConfigDict:
    config = load_config_file(f"{TINY}:{arg}")
    config.data.dir = data_dir
    config.train.num_steps = steps
    config.train.checkpoint_every = steps
    return config


def _weights(workdir: str, step: int) -> dict:
    return jax.device_get(load_run(workdir, step, devices=jax.devices()[:1]).weights)


@pytest.fixture(scope="module")
def resnet_run(synthetic_data_dir, tmp_path_factory) -> tuple:
    """A tiny ResNet CLIP trained 40 steps with zero-shot and retrieval at the end."""
    config = _config(synthetic_data_dir, steps=40)
    config.evals.retrieval = ml_collections.ConfigDict(dict(
        kind="retrieval", num_images=48, captions_per_image=2, batch_size=48))
    workdir = str(tmp_path_factory.mktemp("resnet") / "run")
    return config, workdir, train(config, workdir)


def test_resnet_clip_trains_and_evaluates(resnet_run):
    config, workdir, results = resnet_run
    evals = results["evals"]
    assert evals["zeroshot/fashion_mnist"]["acc1"] > 0.3  # chance 0.1
    assert "image_retrieval_recall@1" in evals["retrieval/fashion_mnist"]
    stats = _weights(workdir, 40)["image"]["bn1"]
    assert np.abs(stats["mean"]).max() > 1e-3  # the running statistics were trained


def test_transfer_evaluators_on_a_resnet_run(resnet_run, tmp_path):
    """Linear probe, few-shot (all methods; CoOp learns context through the text tower), the
    unsupervised method and fine-tuning of the ResNet (its BatchNorm in training mode) run on
    the checkpoint through `vlmjax.evaluate`."""
    config, trained, _ = resnet_run
    workdir = str(tmp_path / "run")
    shutil.copytree(trained, workdir)
    suite = ml_collections.ConfigDict(config.to_dict())
    suite.evals = ml_collections.ConfigDict(TRANSFER)
    evals = evaluate(suite, workdir)["evals"]
    assert evals["linear_probe/fashion_mnist"]["acc1"] > 0.3
    fewshot = evals["fewshot/fashion_mnist"]
    for method in ("linear_probe", "closed_form", "tip_adapter", "tip_adapter_f", "coop"):
        assert any(k.startswith(method) for k in fewshot), (method, sorted(fewshot))
    assert "acc1" in evals["unsupervised/fashion_mnist"] or evals["unsupervised/fashion_mnist"]
    assert np.isfinite(evals["finetune/fashion_mnist"]["acc1"])


def test_resume_is_bit_exact_with_batch_norm_statistics(synthetic_data_dir, tmp_path):
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    config = _config(synthetic_data_dir, steps=6)
    config.train.checkpoint_every = 3
    config.evals = {}
    train(config, straight)
    config.train.num_steps = 3
    train(config, resumed)
    config.train.num_steps = 6
    train(config, resumed)  # continues from the step-3 checkpoint
    a, b = _weights(straight, 6), _weights(resumed, 6)
    assert set(a["image"]["bn1"]) == {"scale", "bias", "mean", "var"}
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_lit_with_a_frozen_resnet_keeps_its_weights_and_statistics(synthetic_data_dir, tmp_path):
    """train.locked_tower=image with model.image.freeze_norm: the image tower (parameters AND
    BatchNorm statistics) is exactly its initialisation; the text tower trains."""
    config = _config(synthetic_data_dir, steps=4)
    config.train.locked_tower = "image"
    config.model.image.freeze_norm = True
    config.evals = {}
    workdir = str(tmp_path / "lit")
    train(config, workdir)
    from vlmjax.parallel.mesh import make_mesh
    from vlmjax.train.state import model_builder, state_layout
    run = load_run(workdir, 4, devices=jax.devices()[:1])
    vocab = run.tokenizer.vocab_size
    layout = state_layout(run.config, vocab, 12, make_mesh(run.config["mesh"]))
    # The same seed re-initialises the same parameters and statistics.
    start = jax.device_get(layout.init(run.config["seed"], model_builder(run.config, vocab, 12)))
    final = jax.device_get(run.weights)
    flat = lambda t: {jax.tree_util.keystr(p): np.asarray(v)  # noqa: E731
                      for p, v in jax.tree_util.tree_flatten_with_path(t)[0]}
    want = {**flat(start["params"]["image"]), **flat(start["model_state"]["image"])}
    got = flat(final["image"])
    assert want.keys() == got.keys()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    text, text0 = flat(final["text"]), flat(start["params"]["text"])
    assert any(not np.array_equal(text[k], text0[k]) for k in text0)


@pytest.mark.parametrize("objective", ["siglip", "filip"])
def test_siglip_and_filip_objectives_train_a_resnet(synthetic_data_dir, tmp_path, objective):
    config = _config(synthetic_data_dir, "siglip" if objective == "siglip" else "clip", steps=4)
    config.evals = {}
    if objective == "filip":
        select(config, "model.name", "filip")
        select(config, "objective.name", "filip")
        config.objective.chunk_size = 8
    train(config, str(tmp_path / "run"))
    weights = _weights(str(tmp_path / "run"), 4)
    assert np.abs(weights["image"]["bn1"]["mean"]).max() > 1e-3


def test_bert_text_tower_trains_and_learns_prompts(synthetic_data_dir, tmp_path):
    """A ResNet + BERT CLIP trains; few-shot CoOp learns context vectors through BERT's word
    embeddings (its position and token-type embeddings still added)."""
    config = _config(synthetic_data_dir, "bert", steps=40)
    workdir = str(tmp_path / "run")
    results = train(config, workdir)
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        losses = [json.loads(line)["loss"] for line in f if '"loss"' in line]
    assert losses[-1] < losses[0] - 0.1  # 3.48 -> 3.13 measured (post-LN BERT starts slowly)
    assert np.isfinite(results["evals"]["zeroshot/fashion_mnist"]["acc1"])
    suite = ml_collections.ConfigDict(config.to_dict())
    suite.evals = ml_collections.ConfigDict(dict(fewshot=dict(
        kind="fewshot", batch_size=200, shots=(1,), seeds=1, methods=("coop",),
        coop_num_context=2, coop_epochs=2)))
    evals = evaluate(suite, workdir)["evals"]
    assert any(k.startswith("coop") for k in evals["fewshot/fashion_mnist"])
