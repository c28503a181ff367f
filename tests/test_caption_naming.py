"""Which class a caption names (longest paraphrase wins) and reproducible reference captions."""

import numpy as np

from vlmjax.data.captions import caption_texts
from vlmjax.data.datasets import caption_vocabulary
from vlmjax.evaluators.caption_naming import class_patterns, named_class, reference_captions

NAMES, TEMPLATES = caption_vocabulary("fashion_mnist")
PATTERNS = class_patterns(NAMES)


def test_longest_paraphrase_wins_and_words_are_whole():
    assert named_class("a photo of a t-shirt.", PATTERNS) == 0  # not "shirt" (class 6)
    assert named_class("a photo of a tee shirt.", PATTERNS) == 0
    assert named_class("a black and white photo of a shirt.", PATTERNS) == 6
    assert named_class("a picture of a leather ankle boot.", PATTERNS) == 9
    assert named_class("an image of a running shoe.", PATTERNS) == 7
    assert named_class("A PHOTO OF A PAIR OF PANTS.", PATTERNS) == 1
    assert named_class("a photo of a bagel.", PATTERNS) == -1  # "bag" is not a whole word here
    assert named_class("a photo of a.", PATTERNS) == -1
    assert named_class("a coat and a dress", PATTERNS) == -1  # two classes named
    assert named_class("a boot, an ankle boot", PATTERNS) == 9  # both name class 9


def test_every_training_caption_names_its_own_class():
    texts, offsets = caption_texts(NAMES, TEMPLATES)
    for k in range(len(NAMES)):
        for text in texts[offsets[k]: offsets[k + 1]]:
            assert named_class(text, PATTERNS) == k, text


def test_reference_captions_are_of_the_right_class_and_reproducible():
    texts, offsets = caption_texts(NAMES, TEMPLATES)
    labels = np.array([3, 0, 9, 3])
    refs = reference_captions(labels, texts, offsets, per_image=5, seed=1)
    assert refs == reference_captions(labels, texts, offsets, per_image=5, seed=1)
    for label, captions in zip(labels, refs, strict=True):
        assert len(set(captions)) == 5
        assert all(named_class(c, PATTERNS) == label for c in captions)
    assert refs[0] != refs[3]  # drawn per image, not per class


def test_captioning_evaluator_scores_the_captions_of_the_right_images(tmp_path, monkeypatch):

    from tests.conftest import write_split
    from vlmjax.evaluators import captioning
    from vlmjax.evaluators.caption_metrics import caption_metrics
    from vlmjax.parallel.mesh import make_mesh

    from .eval_contexts import make_eval_context

    n, rng = 23, np.random.default_rng(0)
    labels = rng.integers(0, 10, size=n)
    images = np.zeros((n, 28, 28), np.uint8)
    images[:, 0, 0] = np.arange(n)  # pixel (0, 0) identifies the image
    write_split(str(tmp_path), "t10k", images, labels)
    right = rng.random(n) < 0.7
    said = np.where(right, labels, (labels + 1) % 10)

    def planted(graphdef, params, images, tokenizer, **kwargs):
        index = np.rint(np.asarray(images)[:, 0, 0, 0]).astype(int)  # mean 0, std 1/255
        return [f"a photo of a {NAMES[said[i]][0]}." for i in index]

    monkeypatch.setattr(captioning, "generate_captions", planted)
    config = {"data": {"dir": str(tmp_path), "image_mean": 0.0, "image_std": 1 / 255},
              "model": {"name": "coca"}}
    ctx = make_eval_context(config, graphdef=None, tokenizer=None, context_length=12,
                      mesh=make_mesh({"data": -1, "fsdp": 1, "tensor": 1}),
                      rules=(("batch", ("data", "fsdp")),))
    evaluator = captioning.Captioning(captioning.Options(batch_size=8, num_images=0), ctx)
    metrics = evaluator.run({})
    assert metrics["class_named"] == np.mean(right)
    want = caption_metrics([f"a photo of a {NAMES[k][0]}." for k in said], evaluator.references)
    assert metrics["bleu4"] == want["bleu4"] and metrics["cider_d"] == want["cider_d"]
    assert metrics["cider_d"] > 0 and 0 < metrics["bleu4"] <= 1
