"""Caption-likelihood zero-shot: per-class template means, and a planted captioner end to end."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.conftest import write_split
from tests.test_zeroshot import ClassIdTokenizer
from vlmjax.errors import ConfigError
from vlmjax.evaluators.caption_zeroshot import CaptionZeroShotClassification, prompt_scores
from vlmjax.objectives.coca import sequence_log_likelihood
from vlmjax.parallel.mesh import make_mesh

from .eval_contexts import make_eval_context


def test_sequence_log_likelihood_against_numpy_with_padding():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 7)).astype(np.float32)
    ids = rng.integers(0, 7, size=(3, 5))
    mask = np.arange(5)[None] < np.array([[5], [3], [1]])
    got = np.asarray(sequence_log_likelihood(jnp.asarray(logits), jnp.asarray(ids), jnp.asarray(mask)))
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    want = [sum(logp[i, t, ids[i, t + 1]] for t in range(4) if mask[i, t + 1]) for i in range(3)]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert got[2] == 0.0  # a lone start token has nothing to predict


def test_prompt_scores_average_the_templates_of_each_class():
    scores = jnp.arange(2 * 6, dtype=jnp.float32).reshape(2, 6)  # 3 classes x 2 templates
    np.testing.assert_allclose(prompt_scores(scores, 3), [[0.5, 2.5, 4.5], [6.5, 8.5, 10.5]])


class PlantedCaptioner(nnx.Module):
    """Finds a prompt likely exactly when it names the class written into pixel (0, 0)."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes

    def image_features(self, images):
        cls = jnp.round(images[:, 0, 0, 0] * 255.0 / 20.0).astype(jnp.int32)
        return None, jax.nn.one_hot(cls, self.num_classes)[:, None, :]  # [b, 1, C]

    def decode(self, caption_tokens, ids, mask):
        match = jnp.einsum("bc,bc->b", caption_tokens[:, 0], jax.nn.one_hot(ids[:, 0], self.num_classes))
        logits = jnp.zeros((*ids.shape, self.num_classes))
        return logits.at[:, :, 0].set(5.0 * match[:, None])  # targets after the class id are 0


def _context(directory: str, model_name: str, classnames: list[str]):
    config = {"data": {"dir": directory, "image_mean": 0.0, "image_std": 1.0},
              "model": {"name": model_name}}
    return make_eval_context(config, graphdef=nnx.split(PlantedCaptioner(10))[0],
                       tokenizer=ClassIdTokenizer(classnames), context_length=4,
                       mesh=make_mesh({"data": -1, "fsdp": 1, "tensor": 1}),
                       rules=(("batch", ("data", "fsdp")),))


def test_planted_captioner_predictions_and_image_cap(tmp_path):
    n, rng = 203, np.random.default_rng(1)
    labels = rng.integers(0, 10, size=n)
    predicted = np.where(rng.random(n) < 0.6, labels, (labels + 3) % 10)
    images = np.zeros((n, 28, 28), np.uint8)
    images[:, 0, 0] = 20 * predicted
    d = str(tmp_path)
    write_split(str(d), "t10k", images, labels)
    from vlmjax.data.datasets import dataset_prompts
    classnames, _ = dataset_prompts("fashion_mnist")
    cfg = {"dataset": "fashion_mnist", "split": "test", "data_dir": "", "batch_size": 40,
           "num_templates": 2, "num_images": 0, "classnames_file": "", "templates_file": ""}
    metrics = CaptionZeroShotClassification(cfg, _context(d, "coca", classnames)).run({})
    assert metrics["acc1"] == pytest.approx(np.mean(predicted == labels))
    capped = CaptionZeroShotClassification({**cfg, "num_images": 50}, _context(d, "coca", classnames))
    assert capped.run({})["acc1"] == pytest.approx(np.mean(predicted[:50] == labels[:50]))
    with pytest.raises(ConfigError, match=r"needs a model with 'captions'.*model.name='two_tower'"):
        CaptionZeroShotClassification(cfg, _context(d, "two_tower", classnames))
