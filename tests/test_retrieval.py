"""COCO / Flickr30k: the Karpathy-split builder (no TensorFlow), their eval sources (every human
caption of every image), and the retrieval and captioning evaluators over them on planted
models."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from tests.test_zeroshot import ClassIdTokenizer
from vlmjax.data.eval_sources import open_eval_source
from vlmjax.data.karpathy_retrieval import prepare
from vlmjax.data.tfds_images import open_split
from vlmjax.errors import ConfigError, DataError
from vlmjax.evaluators import captioning
from vlmjax.evaluators.caption_metrics import caption_metrics
from vlmjax.evaluators.metrics import retrieval_metrics
from vlmjax.evaluators.retrieval import Retrieval
from vlmjax.parallel.mesh import make_mesh

from .eval_contexts import make_eval_context

N_TEST = 11  # 11 test images: a padded last batch of 8 over 8 devices
IMAGE = {"image_size": 6, "channels": 3}


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


def _test_examples(flickr_dir: str) -> list[dict]:
    """The prepared test split's examples as TFDS stores them (images left encoded)."""
    source = open_split("flickr30k", "test", flickr_dir, skip_decoding=True)
    return [source[i] for i in range(len(source))]


def _human_captions(examples: list[dict]) -> tuple[list[str], np.ndarray]:
    """Every caption and the row it describes, read from the examples directly."""
    texts = [c.decode() for e in examples for c in e["captions"]]
    owner = np.array([i for i, e in enumerate(examples) for _ in e["captions"]])
    return texts, owner


def test_builder_keeps_every_caption_and_karpathy_splits(flickr_dir):
    source = open_eval_source("flickr30k", "test", flickr_dir, IMAGE)
    assert source.num_rows == N_TEST and not source.labelled
    captions = source.image_captions()
    assert len(captions.texts) == sum(2 + i % 2 for i in range(N_TEST))
    ids = [e["image_id"].decode() for e in _test_examples(flickr_dir)]
    for text, image in zip(captions.texts, captions.image, strict=True):  # stripped, right image
        assert text.startswith(f"image{ids[image][:-4]} number ")
    assert (source.labels() == -1).all()
    images, labels = source.rows(np.arange(N_TEST))
    assert images.shape == (N_TEST, 6, 6, 3) and (labels == -1).all()
    colours = [5 if int(i[:-4]) == 2 else int(i[:-4]) for i in ids]
    assert images[:, 0, 0, 0].tolist() == [20 * c for c in colours]  # uniform images
    assert open_eval_source("flickr30k", "train", flickr_dir, IMAGE).num_rows == 2
    assert open_eval_source("flickr30k", "test", flickr_dir, IMAGE, limit=4).image_captions(
    ).texts == captions.texts[: sum(2 + i % 2 for i in range(4))]
    with pytest.raises(DataError, match="flickr30k has no split 'validation'; choose one of"):
        open_eval_source("flickr30k", "validation", flickr_dir, IMAGE)
    with pytest.raises(DataError, match="flickr30k has no class labels"):
        _ = source.classnames


def test_unprepared_set_names_the_prepare_command(tmp_path):
    with pytest.raises(DataError, match=r"coco \(karpathy_retrieval/coco, split test\) is not "
                       r"prepared .*`python -m vlmjax.data.karpathy_retrieval --config coco "
                       r"--manual_dir DIR --data_dir " + str(tmp_path)):
        open_eval_source("coco", "test", str(tmp_path), IMAGE)


def _context(model: nnx.Module, names: list[str]):
    config = {"data": {"dir": "", "image_mean": 0.0, "image_std": 1.0},
              "model": {"name": "two_tower", "image": IMAGE}}
    return make_eval_context(config, graphdef=nnx.split(model)[0],
                             tokenizer=ClassIdTokenizer(names), context_length=4,
                             mesh=make_mesh({"data": -1, "fsdp": 1, "tensor": 1}),
                             rules=(("batch", ("data", "fsdp")),))


def test_retrieval_evaluator_on_a_planted_model(flickr_dir):
    ctx = _context(ColourModel(N_TEST + 2), [f"image{i}" for i in range(N_TEST + 2)])
    evaluator = Retrieval({"dataset": "flickr30k", "split": "test", "data_dir": flickr_dir,
                           "num_images": 0, "batch_size": 8}, ctx)
    metrics = evaluator.run({})
    # The same scores built independently: image i (test order) has colour c_i, text t names
    # its image's file, both one-hot.
    examples = _test_examples(flickr_dir)
    files = [int(e["image_id"].decode()[:-4]) for e in examples]
    colour = [5 if f == 2 else f for f in files]
    texts, owner = _human_captions(examples)
    text_file = [int(t.split()[0][5:]) for t in texts]
    scores = np.array([[float(colour[i] == text_file[t]) for t in range(len(texts))]
                       for i in range(N_TEST)])
    want = retrieval_metrics(scores, scores, owner[None, :] == np.arange(N_TEST)[:, None])
    assert metrics == pytest.approx(want)
    assert 0 < metrics["text_retrieval_recall@1"] < 1  # image 2 finds image 5's captions first
    with pytest.raises(ConfigError, match="human captions of each image: use relevance='pair'"):
        Retrieval({"dataset": "flickr30k", "data_dir": flickr_dir, "relevance": "class"}, ctx)


def test_captioning_a_captioned_set_scores_against_its_human_captions(flickr_dir, monkeypatch):
    """References are every human caption of each image (no class_named: no labels); the
    planted captioner repeats an image's first caption for even colours, a wrong one else."""
    examples = _test_examples(flickr_dir)
    texts, owner = _human_captions(examples)
    first = {int(e["image_id"].decode()[:-4]): e["captions"][0].decode() for e in examples}

    def planted(graphdef, params, images, tokenizer, **kwargs):
        colours = np.rint(np.asarray(images)[:, 0, 0, 0] * 255 / 20).astype(int)
        return [first[c] if c % 2 == 0 else "a photo of nothing at all." for c in colours]

    monkeypatch.setattr(captioning, "generate_captions", planted)
    config = {"data": {"dir": "", "image_mean": 0.0, "image_std": 1.0},
              "model": {"name": "coca", "image": IMAGE}}
    ctx = make_eval_context(config, graphdef=None, tokenizer=None, context_length=12,
                            mesh=make_mesh({"data": -1, "fsdp": 1, "tensor": 1}),
                            rules=(("batch", ("data", "fsdp")),))
    metrics = captioning.Captioning(captioning.Options(
        dataset="flickr30k", data_dir=flickr_dir, batch_size=4, num_images=0), ctx).run({})
    colours = [5 if int(e["image_id"].decode()[:-4]) == 2 else int(e["image_id"].decode()[:-4])
               for e in examples]
    generated = [first[c] if c % 2 == 0 else "a photo of nothing at all." for c in colours]
    references = [[t for t, o in zip(texts, owner, strict=True) if o == i] for i in range(N_TEST)]
    assert metrics == caption_metrics(generated, references)
    assert 0 < metrics["bleu4"] < 1
