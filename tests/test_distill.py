"""Distillation (model and objective 'distill'): each loss term against NumPy, on one device
and over the 8-device global batch; the teacher frozen, pinned to one step and recorded (a
checkpoint written into the teacher run later is not picked up, on resume or ever); the
refusals of unusable teachers; a tiny run that trains and evaluates without the teacher."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from tests.conftest import REPO, TINY_CONFIG
from vlmjax.errors import ConfigError
from vlmjax.objectives import distill as objective
from vlmjax.objectives.registry import get_objective

TINY_DISTILL = os.path.join(REPO, "configs", "test", "tiny_distill.py")


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))


def numpy_kl_rows(teacher: np.ndarray, student: np.ndarray) -> float:
    p, logp, logq = np.exp(_log_softmax(teacher)), _log_softmax(teacher), _log_softmax(student)
    return float(np.mean(np.sum(p * (logp - logq), axis=1)))


def numpy_ce_diagonal(logits: np.ndarray) -> float:
    return float(-np.mean(np.diag(_log_softmax(logits))))


def numpy_clip(img: np.ndarray, txt: np.ndarray, s: float) -> float:
    logits = s * img @ txt.T
    return (numpy_ce_diagonal(logits) + numpy_ce_diagonal(logits.T)) / 2


def numpy_terms(x: dict) -> dict:
    """Every term of the module doc, in float64."""
    u, v, s = x["image_embed"], x["text_embed"], x["logit_scale"]
    mu, mv = x["distill_image_embed"], x["distill_text_embed"]
    a, b, st = x["teacher_image_embed"], x["teacher_text_embed"], x["teacher_logit_scale"]
    student_logits, teacher_logits = s * u @ v.T, st * a @ b.T
    return {
        "student": numpy_clip(u, v, s),
        "cosine": (np.mean(1 - np.sum(mu * a, 1)) + np.mean(1 - np.sum(mv * b, 1))) / 2,
        "mse": (np.mean(np.sum((mu - a) ** 2, 1)) + np.mean(np.sum((mv - b) ** 2, 1))) / 2,
        "l1": (np.mean(np.abs(mu - a).sum(1)) + np.mean(np.abs(mv - b).sum(1))) / 2,
        "affinity": (numpy_kl_rows(teacher_logits, student_logits)
                     + numpy_kl_rows(teacher_logits.T, student_logits.T)) / 2,
        "interactive": (numpy_ce_diagonal(s * mu @ b.T) + numpy_ce_diagonal(s * mv @ a.T)) / 2,
    }


def _outputs(seed: int = 0, n: int = 12, e: int = 6, et: int = 10) -> dict:
    rng = np.random.default_rng(seed)
    return {"image_embed": _unit(rng, n, e), "text_embed": _unit(rng, n, e),
            "distill_image_embed": _unit(rng, n, et), "distill_text_embed": _unit(rng, n, et),
            "teacher_image_embed": _unit(rng, n, et), "teacher_text_embed": _unit(rng, n, et),
            "logit_scale": 8.0, "teacher_logit_scale": 30.0}


def _jnp(x: dict) -> dict:
    return {k: jnp.asarray(v, jnp.float32) for k, v in x.items()}


@pytest.mark.parametrize("kind", objective.FEATURE_LOSSES)
def test_each_term_matches_numpy(kind):
    x = _outputs()
    want = numpy_terms(x)
    options = {"feature_weight": 0.7, "feature_loss": kind, "affinity_weight": 1.3,
               "interactive_weight": 0.4, "student_weight": 0.9}
    loss, metrics = get_objective("distill").loss(_jnp(x), options)
    np.testing.assert_allclose(float(metrics["student_loss"]), want["student"], rtol=1e-5)
    np.testing.assert_allclose(float(metrics["feature_loss"]), want[kind], rtol=1e-5)
    np.testing.assert_allclose(float(metrics["affinity_loss"]), want["affinity"], rtol=1e-4)
    np.testing.assert_allclose(float(metrics["interactive_loss"]), want["interactive"], rtol=1e-5)
    total = (0.9 * want["student"] + 0.7 * want[kind] + 1.3 * want["affinity"]
             + 0.4 * want["interactive"])
    np.testing.assert_allclose(float(loss), total, rtol=1e-5)
    # Terms at weight 0 are not computed (nor logged).
    _, plain = get_objective("distill").loss(_jnp(x), {"affinity_weight": 0.0})
    assert set(plain) >= {"student_loss"} and not {"affinity_loss", "feature_loss"} & set(plain)


def test_hand_computed_cases():
    # A student that reproduces the teacher's logits has zero affinity KL (any batch), and an
    # identical embedding has zero feature distance.
    x = _outputs(1, n=5, e=4, et=4)
    x.update(teacher_image_embed=x["image_embed"], teacher_text_embed=x["text_embed"],
             distill_image_embed=x["image_embed"], distill_text_embed=x["text_embed"],
             teacher_logit_scale=x["logit_scale"])
    _, m = get_objective("distill").loss(_jnp(x), {"feature_weight": 1.0})
    assert abs(float(m["affinity_loss"])) < 1e-6 and abs(float(m["feature_loss"])) < 1e-6
    # Two pairs, orthogonal embeddings, scale 1: every interactive cross-entropy is
    # log(1 + e^-1), as CLIP's on the identity.
    eye = np.eye(2)
    y = {k: eye for k in ("image_embed", "text_embed", "distill_image_embed",
                          "distill_text_embed", "teacher_image_embed", "teacher_text_embed")}
    y.update(logit_scale=1.0, teacher_logit_scale=1.0)
    _, m = get_objective("distill").loss(_jnp(y), {"interactive_weight": 1.0})
    np.testing.assert_allclose(float(m["interactive_loss"]), np.log1p(np.exp(-1.0)), rtol=1e-6)


def test_siglip_student_loss_and_gradients_reach_only_the_student():
    from vlmjax.objectives.sigmoid import sigmoid_contrastive
    x = _jnp({**_outputs(2), "logit_bias": -3.0})
    options = {"student_loss": "siglip", "feature_weight": 1.0, "interactive_weight": 1.0}
    _, m = get_objective("distill").loss(x, options)
    want, _ = sigmoid_contrastive(x["image_embed"], x["text_embed"], x["logit_scale"], -3.0)
    np.testing.assert_allclose(float(m["student_loss"]), float(want), rtol=1e-6)
    grads = jax.grad(lambda o: get_objective("distill").loss(o, options)[0])(x)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))


def test_sharded_global_batch_equals_numpy():
    """Embeddings split over 8 devices give the loss of the concatenated batch."""
    assert jax.device_count() == 8
    x = _outputs(3, n=64, e=8, et=16)
    want = numpy_terms(x)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharded = NamedSharding(mesh, PartitionSpec("data"))
    out = {k: jax.device_put(v, sharded) if v.ndim else v for k, v in _jnp(x).items()}
    options = {"feature_weight": 1.0, "affinity_weight": 1.0, "interactive_weight": 1.0}
    _, m = jax.jit(lambda o: get_objective("distill").loss(o, options))(out)
    for key, ref in (("student_loss", "student"), ("feature_loss", "cosine"),
                     ("affinity_loss", "affinity"), ("interactive_loss", "interactive")):
        np.testing.assert_allclose(float(m[key]), want[ref], rtol=1e-4, err_msg=key)


# --- the model and the train layer on tiny runs ---------------------------------------------

@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, synthetic_data_dir):
    """A tiny CLIP trained 10 steps (checkpoints 5 and 10): the teacher."""
    from vlmjax.config import load_config_file
    from vlmjax.train.loop import train
    config = load_config_file(TINY_CONFIG)
    config.data.dir = synthetic_data_dir
    config.train.update(num_steps=10, checkpoint_every=5)
    config.evals = {}
    workdir = str(tmp_path_factory.mktemp("teacher"))
    train(config, workdir)
    return workdir


def _student_config(teacher: str, data_dir: str, arg: str = "clip"):
    from vlmjax.config import load_config_file
    config = load_config_file(TINY_DISTILL + f":{arg}")
    config.data.dir = data_dir
    config.model.distill.teacher = teacher
    return config


@pytest.fixture(scope="module")
def student_run(tmp_path_factory, teacher_run, synthetic_data_dir):
    """The tiny student distilled 6 steps from a copy of the teacher run (the copy gets
    another checkpoint written into it by the tests)."""
    from vlmjax.train.loop import train
    teacher = str(tmp_path_factory.mktemp("teacher_copy") / "run")
    shutil.copytree(teacher_run, teacher)
    workdir = str(tmp_path_factory.mktemp("student"))
    results = train(_student_config(teacher, synthetic_data_dir), workdir)
    return teacher, workdir, results


def _teacher_weights(teacher: str, step: int) -> dict:
    from vlmjax.train.run import load_run
    return jax.device_get(load_run(teacher, step).weights)


def _assert_same_tree(a: dict, b: dict) -> None:
    """Bit equality of two trees holding the same stored values (exact: the teacher's weights
    are only moved, checkpoint to model state to checkpoint, never computed on)."""
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_the_run_trains_evaluates_and_keeps_the_teacher_frozen(student_run):
    from vlmjax.train.run import load_run
    teacher, workdir, results = student_run
    assert 0 <= results["evals"]["zeroshot/fashion_mnist"]["acc1"] <= 1
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if '"affinity_loss"' in line]
    assert rows and all(np.isfinite(r[k]) for r in rows for k in
                        ("student_loss", "feature_loss", "affinity_loss", "interactive_loss"))
    with open(os.path.join(workdir, "config.json")) as f:
        recorded = json.load(f)["model"]["distill"]
    assert recorded["teacher_step"] == 10 and recorded["teacher_model"]["embed_dim"] == 16
    run = load_run(workdir)
    # The teacher is no parameter (no gradient, no optimizer state) and is bit-identical to
    # the teacher run's weights at the pinned step after 6 updates of the student.
    assert "teacher" not in run.params and "teacher" in run.model_state
    opt_paths = jax.tree_util.tree_flatten_with_path(run.state["opt_state"])[0]
    assert opt_paths and not [p for p, _ in opt_paths
                              if any(getattr(k, "key", None) == "teacher" for k in p)]
    _assert_same_tree(jax.device_get(run.model_state["teacher"]), _teacher_weights(teacher, 10))
    # The student's towers (what evaluators call) differ from the teacher's: they trained.
    assert run.params["image_proj"]["kernel"].shape == (8, 8)
    images = jnp.zeros((2, 28, 28, 1))
    model = run.model()
    assert model.encode_image(images).shape == (2, 8)
    assert model.teacher.encode_image(images).shape == (2, 16)


def test_evaluate_needs_only_the_run_not_the_teacher(student_run):
    """`python -m vlmjax.evaluate --workdir RUN`: config.json rebuilds student and teacher."""
    from vlmjax.evaluate import evaluate
    from vlmjax.train.workdir import load_saved_config
    teacher, workdir, results = student_run
    os.rename(teacher, teacher + ".away")
    try:
        again = evaluate(load_saved_config(workdir), workdir)
    finally:
        os.rename(teacher + ".away", teacher)
    assert again["evals"] == results["evals"]


def test_evaluate_with_the_experiment_config_takes_the_recorded_teacher(student_run,
                                                                        synthetic_data_dir):
    """`vlmjax.evaluate --workdir RUN --config EXPERIMENT.py` (teacher_step -1, no teacher model
    section): the run's recorded teacher is used, the teacher directory is not read."""
    from vlmjax.evaluate import evaluate
    teacher, workdir, results = student_run
    os.rename(teacher, teacher + ".away")
    try:
        again = evaluate(_student_config(teacher, synthetic_data_dir), workdir)
    finally:
        os.rename(teacher + ".away", teacher)
    assert again["evals"] == results["evals"]


def _write_later_teacher_checkpoint(teacher: str) -> None:
    """Another (different) checkpoint of the teacher, step 20, as a resumed teacher would."""
    from vlmjax.train.checkpoint import Checkpointer
    from vlmjax.train.run import load_run
    run = load_run(teacher, 10)
    state = {**run.state, "params": jax.tree.map(lambda p: p + 1.0, run.state["params"]),
             "step": run.state["step"] + 10}
    with Checkpointer(os.path.join(teacher, "checkpoints"), async_save=False) as ckpt:
        ckpt.save(20, state, {})


def test_a_later_teacher_checkpoint_is_never_picked_up(student_run, synthetic_data_dir,
                                                       tmp_path):
    from vlmjax.train.loop import train
    from vlmjax.train.run import load_run
    teacher, workdir, _ = student_run
    _write_later_teacher_checkpoint(teacher)
    # Resume with the experiment config (teacher_step=-1 there): still the recorded step 10.
    resumed = str(tmp_path / "resumed")
    shutil.copytree(workdir, resumed)
    config = _student_config(teacher, synthetic_data_dir)
    config.train.num_steps = 9
    train(config, resumed)
    with open(os.path.join(resumed, "config.json")) as f:
        assert json.load(f)["model"]["distill"]["teacher_step"] == 10
    _assert_same_tree(jax.device_get(load_run(resumed).model_state["teacher"]),
                      _teacher_weights(teacher, 10))
    # An explicit other step on resume is a training change, refused naming the key.
    config.model.distill.teacher_step = 20
    with pytest.raises(ConfigError, match="teacher_step"):
        train(config, resumed)
    # A new run resolves -1 to the teacher's latest step at its start, and records it.
    from vlmjax.config.schema import complete
    from vlmjax.train.distill_teacher import resolve_teacher
    fresh = complete(_student_config(teacher, synthetic_data_dir))
    assert resolve_teacher(fresh, str(tmp_path / "new")).model.distill.teacher_step == 20


@pytest.mark.parametrize("case,match", [
    ("missing", "does not exist"),
    ("not_a_run", "is not a vlmjax run"),
    ("step", "teacher_step=7 is not a checkpoint"),
    ("tokenizer", "tokenizer.vocab_size=500 differs from the teacher's"),
    ("normalisation", "data.image_mean=0.5 differs from the teacher's"),
    ("image_size", "model.image.image_size=14 differs from the teacher's"),
    ("projection", "model.distill.projection='none' but the teacher's embed_dim"),
    ("no_embeddings", "gives no pooled image/text embeddings"),
    ("unset", "model.distill.teacher is empty"),
])
def test_unusable_teachers_are_refused_before_compiling(teacher_run, synthetic_data_dir,
                                                        tmp_path, case, match):
    from vlmjax.train.loop import train
    config = _student_config(teacher_run, synthetic_data_dir)
    if case == "missing":
        config.model.distill.teacher = str(tmp_path / "nowhere")
    elif case == "not_a_run":
        os.makedirs(tmp_path / "empty")
        config.model.distill.teacher = str(tmp_path / "empty")
    elif case == "step":
        config.model.distill.teacher_step = 7
    elif case == "tokenizer":
        config.tokenizer.vocab_size = 500
    elif case == "normalisation":
        config.data.image_mean = 0.5
    elif case == "image_size":
        config.model.image.image_size = 14
    elif case == "projection":
        config.model.distill.projection = "none"
    elif case == "no_embeddings":  # a FILIP teacher (token-wise only): its config.json says so
        fake = tmp_path / "filip"
        os.makedirs(fake)
        for name in ("tokenizer", "checkpoints"):
            os.symlink(os.path.join(teacher_run, name), fake / name)
        with open(os.path.join(teacher_run, "config.json")) as f:
            saved = json.load(f)
        saved["model"]["name"] = "filip"
        (fake / "config.json").write_text(json.dumps(saved))
        config.model.distill.teacher = str(fake)
    elif case == "unset":
        config.model.distill.teacher = ""
    with pytest.raises(ConfigError, match=match) as info:
        train(config, str(tmp_path / "student"))
    assert "\n" not in str(info.value)
    assert not os.path.exists(tmp_path / "student" / "checkpoints")


@pytest.mark.parametrize("arg", ["distill", "alone"])
def test_the_demo_config_validates(synthetic_data_dir, arg):
    from vlmjax.config import load_config_file
    from vlmjax.config.validate import validate
    config = load_config_file(os.path.join(REPO, "configs", "demo", "distill_fashion_mnist.py")
                              + f":{arg}")
    config.data.dir = synthetic_data_dir
    validate(config, 8)  # the teacher's own checks run when training resolves it
    assert config.model.name == ("distill" if arg == "distill" else "two_tower")


def test_a_distilled_run_exports_its_student_to_transformers(teacher_run, synthetic_data_dir,
                                                              tmp_path):
    """`--to hf` writes the student alone, as the two-tower CLIP it is: transformers' CLIPModel
    on the export gives the student's embeddings and logits; the teacher (model state) and the
    training-only projections stay behind."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tests.interop_runs import flat_params, forward, restore_run
    from vlmjax.interop.hf_export import export_hf
    from vlmjax.train.loop import train
    config = _student_config(teacher_run, synthetic_data_dir)
    config.model.image.ln_pre = True  # HF CLIP's pre-LayerNorm
    config.train.num_steps = config.train.checkpoint_every = 3
    config.evals = {}
    workdir, output = str(tmp_path / "student"), str(tmp_path / "hf")
    train(config, workdir)
    export_hf(workdir, output)
    run = restore_run(workdir)
    assert any(k.startswith("image_to_teacher/") for k in flat_params(run))  # left behind
    texts = ["a photo of a trouser", "a blurry photo of a bag"]
    images = np.random.default_rng(1).integers(0, 256, (3, 28, 28, 1), np.uint8)
    ours = forward(run, images, texts)
    model = transformers.CLIPModel.from_pretrained(output).eval()
    assert model.config.projection_dim == config.model.embed_dim  # the student's, not 16
    ctx = run.cfg["tokenizer"]["context_length"]
    with torch.no_grad():
        out = model(input_ids=torch.as_tensor(np.asarray(ours["ids"]), dtype=torch.long),
                    attention_mask=torch.as_tensor(np.asarray(ours["mask"]), dtype=torch.long),
                    pixel_values=torch.as_tensor(np.array(ours["pixels"])).permute(0, 3, 1, 2))
    assert ours["ids"].shape == (2, ctx)
    ref = {"image": out.image_embeds, "text": out.text_embeds, "logits": out.logits_per_image}
    for key, value in ref.items():
        np.testing.assert_allclose(value.numpy(), ours[key], atol=1e-4, rtol=0, err_msg=key)
