"""Zero-shot classification: metrics by hand, class embeddings vs NumPy, planted models."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.conftest import write_split
from vlmjax.evaluators.metrics import classification_metrics
from vlmjax.evaluators.zeroshot import ZeroShotClassification, class_embeddings, predict_topk
from vlmjax.parallel.mesh import make_mesh
from vlmjax.tokenizers import Tokenizer

from .eval_contexts import make_eval_context


def test_metrics_hand_computed():
    topk = np.array([[0, 1, 2, 3, 4], [1, 0, 2, 3, 4], [2, 1, 0, 3, 4], [4, 3, 2, 1, 0],
                     [0, 1, 2, 3, 4], [1, 2, 3, 4, 5]])
    labels = np.array([0, 0, 2, 1, 5, 5])
    m = classification_metrics(topk, labels, num_classes=6)
    assert m["acc1"] == pytest.approx(2 / 6)  # rows 0 and 2
    assert m["acc5"] == pytest.approx(5 / 6)  # all but row 4 (class 5 absent from its top 5)
    # per-class recall: class 0: 1/2, class 1: 0/1, class 2: 1/1, class 5: 0/2 -> mean 0.375
    assert m["mean_per_class_recall"] == pytest.approx(0.375)
    assert "acc5" not in classification_metrics(topk[:, :1] % 3, labels % 3, num_classes=3)


def test_class_embeddings_average_then_renormalise():
    rng = np.random.default_rng(0)
    e = rng.normal(size=(3 * 4, 5))
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    want = e.reshape(3, 4, 5).mean(1)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(class_embeddings(jnp.asarray(e), 3), want, rtol=1e-5, atol=1e-6)


def test_predict_topk_on_planted_embeddings():
    classifier = jnp.eye(6)
    # Image i points mostly at class (i % 6), second-most at (i + 1) % 6.
    img = np.zeros((12, 6))
    img[np.arange(12), np.arange(12) % 6] = 1.0
    img[np.arange(12), (np.arange(12) + 1) % 6] = 0.5
    top = np.asarray(predict_topk(jnp.asarray(img), classifier, 5))
    np.testing.assert_array_equal(top[:, 0], np.arange(12) % 6)
    np.testing.assert_array_equal(top[:, 1], (np.arange(12) + 1) % 6)


class ClassIdTokenizer(Tokenizer):
    """Encodes a prompt as the index of the class name it contains (a planted tokenizer)."""

    def __init__(self, classnames):
        self.classnames = classnames

    @property
    def vocab_size(self):
        return len(self.classnames)

    def encode(self, texts, context_length):
        ids = np.zeros((len(texts), context_length), np.int32)
        for i, text in enumerate(texts):
            ids[i, 0] = max(range(len(self.classnames)),
                            key=lambda c: len(self.classnames[c]) * (self.classnames[c] in text))
        return ids, np.ones_like(ids, bool)

    def decode(self, ids):
        return self.classnames[ids[0]]

    def save(self, directory):
        raise NotImplementedError


class PlantedModel(nnx.Module):
    """Image embedding = one-hot of the class written into pixel (0, 0) (value 20 * class)."""

    def __init__(self, num_classes):
        self.num_classes = num_classes

    def encode_image(self, images):
        cls = jnp.round(images[:, 0, 0, 0] * 255.0 / 20.0).astype(jnp.int32)
        return jax.nn.one_hot(cls, self.num_classes)

    def encode_text(self, ids, mask):
        return jax.nn.one_hot(ids[:, 0], self.num_classes)


def test_evaluator_run_on_a_planted_model(tmp_path):
    """203 images (a padded last batch over 8 devices) whose predictions are known: acc1 = 0.7."""
    n, rng = 203, np.random.default_rng(0)
    labels = rng.integers(0, 10, size=n)
    predicted = labels.copy()
    wrong = rng.permutation(n)[: n - 142]  # 142 of 203 stay right
    predicted[wrong] = (labels[wrong] + 1 + rng.integers(0, 9, size=len(wrong))) % 10
    images = np.zeros((n, 28, 28), np.uint8)
    images[:, 0, 0] = 20 * predicted
    d = str(tmp_path)
    write_split(str(d), "t10k", images, labels)
    from vlmjax.data.datasets import dataset_prompts
    classnames, _ = dataset_prompts("fashion_mnist")
    config = {"data": {"dir": d, "image_mean": 0.0, "image_std": 1.0},
              "model": {"name": "two_tower", "image": {"image_size": 28, "channels": 1}}}
    ctx = make_eval_context(config, graphdef=nnx.split(PlantedModel(10))[0],
                            tokenizer=ClassIdTokenizer(classnames), context_length=4,
                            mesh=make_mesh({"data": -1, "fsdp": 1, "tensor": 1}),
                            rules=(("batch", ("data", "fsdp")),))
    evaluator = ZeroShotClassification({"dataset": "fashion_mnist", "split": "test", "data_dir": "",
                                        "batch_size": 40, "classnames_file": "",
                                        "templates_file": ""}, ctx)
    metrics = evaluator.run({})
    assert metrics["acc1"] == pytest.approx(np.mean(predicted == labels))
    assert metrics["acc1"] == pytest.approx(142 / 203)
    recalls = [np.mean(predicted[labels == c] == c) for c in range(10)]
    assert metrics["mean_per_class_recall"] == pytest.approx(np.mean(recalls))
    # Every other class scores 0; top_k breaks ties by lower index, so the top 5 is the
    # prediction followed by the four smallest other class ids.
    top5 = [[p] + [c for c in range(10) if c != p][:4] for p in predicted]
    assert metrics["acc5"] == pytest.approx(np.mean([y in t for y, t in zip(labels, top5, strict=True)]))
    # Evaluating a checkpoint: class-prompt features are cached per checkpoint and dataset.
    import dataclasses
    cached_ctx = dataclasses.replace(ctx, checkpoint="step_7", cache_dir=str(tmp_path / "cache"))
    cfg = {"dataset": "fashion_mnist", "split": "test", "batch_size": 40}
    first = ZeroShotClassification(cfg, cached_ctx)
    assert first.run({}) == metrics
    files = list((tmp_path / "cache" / "zeroshot").iterdir())
    assert len(files) == 1 and files[0].name.startswith("fashion_mnist_step_7_")
    second = ZeroShotClassification(cfg, cached_ctx)
    second._encode_text = None  # would fail if called: the features come from the cache
    assert second.run({}) == metrics
    other = ZeroShotClassification(cfg, dataclasses.replace(cached_ctx, checkpoint="step_8"))
    other.run({})
    assert len(list((tmp_path / "cache" / "zeroshot").iterdir())) == 2


def test_on_disk_images_must_have_the_models_size(tiny_config, tmp_path):
    """On-disk images are not resized: a model of another size is refused before anything
    compiles (validation) and when the evaluator is built."""
    from vlmjax.config import validate
    from vlmjax.errors import ConfigError
    tiny_config.model.image.image_size = 56
    with pytest.raises(ConfigError, match=r"config.evals.zeroshot.dataset='fashion_mnist' cannot "
                       r"be evaluated by this model: the fashion_mnist images .* are 28x28"):
        validate(tiny_config, 8, training=False)
    config = {"data": {"dir": tiny_config.data.dir, "image_mean": 0.0, "image_std": 1.0},
              "model": {"name": "two_tower", "image": {"image_size": 56, "channels": 1}}}
    ctx = make_eval_context(config, graphdef=nnx.split(PlantedModel(10))[0],
                            tokenizer=ClassIdTokenizer(["a"]), context_length=4,
                            mesh=make_mesh({"data": -1, "fsdp": 1, "tensor": 1}),
                            rules=(("batch", ("data", "fsdp")),))
    with pytest.raises(ConfigError, match=r"model.image.image_size=56; set --config.model.image."
                       r"image_size=28"):
        ZeroShotClassification({"dataset": "fashion_mnist"}, ctx)
