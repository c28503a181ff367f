"""COCO / Flickr30k retrieval sets: the Karpathy-split builder (no TensorFlow) and the retrieval
evaluator over them, every caption of every image, on a planted model."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from tests.test_zeroshot import ClassIdTokenizer
from vlmjax.data.karpathy_retrieval import captions_of, open_retrieval_split, prepare
from vlmjax.errors import DataError
from vlmjax.evaluators.metrics import retrieval_metrics
from vlmjax.evaluators.retrieval import Retrieval
from vlmjax.parallel.mesh import make_mesh

from .eval_contexts import make_eval_context

N_TEST = 11  # 11 test images: a padded last batch of 8 over 8 devices


@pytest.fixture(scope="module")
def flickr_dir(tmp_path_factory) -> str:
    """A Flickr30k-format manual directory, prepared: image i is gray level 20 * colour[i]."""
    root = tmp_path_factory.mktemp("flickr")
    (root / "manual" / "flickr30k-images").mkdir(parents=True)
    colours = list(range(N_TEST + 2))
    colours[2] = colours[5]  # image 2 looks exactly like image 5
    entries = []
    for i, colour in enumerate(colours):
        Image.fromarray(np.full((12, 18, 3), 20 * colour, np.uint8)).save(
            root / "manual" / "flickr30k-images" / f"{i}.jpg", format="PNG")  # lossless
        entries.append({"filename": f"{i}.jpg", "split": "test" if i < N_TEST else "train",
                        "sentences": [{"raw": f" image{i} number {k} "} for k in range(2 + i % 2)]})
    (root / "manual" / "dataset_flickr30k.json").write_text(json.dumps({"images": entries}))
    prepare("flickr30k", str(root / "manual"), str(root / "data"))
    return str(root / "data")


class ColourModel(nnx.Module):
    """Image embedding: one-hot of its gray level / 20; text embedding: one-hot of its image."""

    def __init__(self, n: int):
        self.n = n

    def encode_image(self, images):
        return jax.nn.one_hot(jnp.round(images[:, 0, 0, 0] * 255.0 / 20.0).astype(jnp.int32), self.n)

    def encode_text(self, ids, mask):
        return jax.nn.one_hot(ids[:, 0], self.n)


def test_builder_keeps_every_caption_and_karpathy_splits(flickr_dir):
    source = open_retrieval_split("flickr30k", "test", flickr_dir)
    assert len(source) == N_TEST
    texts, owner = captions_of(source)
    assert len(texts) == sum(2 + i % 2 for i in range(N_TEST))
    ids = [source[i]["image_id"].decode() for i in range(N_TEST)]
    for text, image in zip(texts, owner, strict=True):  # stripped, and owned by the right image
        assert text.startswith(f"image{ids[image][:-4]} number ")
    assert len(open_retrieval_split("flickr30k", "train", flickr_dir)) == 2
    with pytest.raises(DataError, match="flickr30k has no split 'validation'; choose one of"):
        open_retrieval_split("flickr30k", "validation", flickr_dir)


def test_unprepared_set_names_the_prepare_command(tmp_path):
    with pytest.raises(DataError, match=r"coco \(split test\) is not prepared .* python -m "
                       r"vlmjax.data.karpathy_retrieval --config coco --manual_dir DIR"):
        open_retrieval_split("coco", "test", str(tmp_path))


def test_retrieval_evaluator_on_a_planted_model(flickr_dir):
    names = [f"image{i}" for i in range(N_TEST + 2)]
    config = {"data": {"dir": "", "image_mean": 0.0, "image_std": 1.0},
              "model": {"name": "two_tower", "image": {"image_size": 6, "channels": 3}}}
    ctx = make_eval_context(config, graphdef=nnx.split(ColourModel(N_TEST + 2))[0],
                      tokenizer=ClassIdTokenizer(names), context_length=4,
                      mesh=make_mesh({"data": -1, "fsdp": 1, "tensor": 1}),
                      rules=(("batch", ("data", "fsdp")),))
    evaluator = Retrieval({"dataset": "flickr30k", "split": "test", "data_dir": flickr_dir,
                           "num_images": 0, "batch_size": 8}, ctx)
    metrics = evaluator.run({})
    # The same scores built independently: image i (test order) has colour c_i, text t names
    # its image's file, both one-hot.
    source = open_retrieval_split("flickr30k", "test", flickr_dir)
    files = [int(source[i]["image_id"].decode()[:-4]) for i in range(N_TEST)]
    colour = [5 if f == 2 else f for f in files]
    texts, owner = captions_of(source)
    text_file = [int(t.split()[0][5:]) for t in texts]
    scores = np.array([[float(colour[i] == text_file[t]) for t in range(len(texts))]
                       for i in range(N_TEST)])
    want = retrieval_metrics(scores, scores, owner[None, :] == np.arange(N_TEST)[:, None])
    assert metrics == pytest.approx(want)
    assert 0 < metrics["text_retrieval_recall@1"] < 1  # image 2 finds image 5's captions first
