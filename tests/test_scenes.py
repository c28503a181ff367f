"""Fashion-MNIST scenes: determinism, masks vs boxes vs captions vs phrases, splits, the training
source's batches and exact resume, the evaluation sources and their errors."""

import re

import numpy as np
import pytest

from tests.conftest import synthetic_fashion_mnist
from vlmjax.data.datasets import load_split
from vlmjax.data.dense_sources import ScenesSource, open_dense_source
from vlmjax.data.eval_sources import check_eval_source, eval_prompts, open_eval_source
from vlmjax.data.scenes import (
    BACKGROUND,
    SCENE_SETS,
    article,
    scene,
    scene_texts,
    scene_vocabulary,
    split_pool,
)
from vlmjax.data.scenes_source import ScenesCaptions, phrase_batch
from vlmjax.errors import ConfigError, DataError

SIZE = 48


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    return synthetic_fashion_mnist(str(tmp_path_factory.mktemp("fmnist")), n_train=240, n_test=60)


@pytest.fixture(scope="module")
def pool(data_dir):
    images, labels = load_split("fashion_mnist", data_dir, "train")
    return split_pool(images, labels, "train")


@pytest.mark.parametrize("name", sorted(SCENE_SETS))
def test_a_scene_is_a_pure_function_of_its_key(pool, name):
    spec = SCENE_SETS[name]
    a, b = scene(spec, pool, "train", SIZE, 7, seed=1), scene(spec, pool, "train", SIZE, 7, seed=1)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert a.caption == b.caption and a.phrases == b.phrases
    others = [scene(spec, pool, "train", SIZE, 7, seed=2), scene(spec, pool, "train", SIZE, 8, seed=1)]
    assert all(not np.array_equal(a.image, o.image) for o in others)


@pytest.mark.parametrize("name", sorted(SCENE_SETS))
def test_masks_boxes_captions_and_phrases_agree(pool, name):
    spec = SCENE_SETS[name]
    names = scene_vocabulary()["caption_names"]
    counts = []
    for index in range(60):
        s = scene(spec, pool, "train", SIZE, index)
        k = len(s.labels)
        counts.append(k)
        assert spec.min_items <= k <= spec.max_items or spec.layout == "random"
        assert s.image.shape == s.mask.shape == (SIZE, SIZE) and s.image.dtype == np.uint8
        assert set(np.unique(s.mask)) <= {BACKGROUND, *(s.labels + 1).tolist()}
        assert np.all(s.image[s.mask == BACKGROUND] <= spec.mask_threshold)
        assert np.all(s.image[s.mask != BACKGROUND] > spec.mask_threshold)
        for (x0, y0, x1, y1), label, phrase in zip(s.boxes, s.labels, s.phrases, strict=True):
            inside = s.mask[y0:y1, x0:x1] == label + 1
            assert inside.any(axis=1)[[0, -1]].all() and inside.any(axis=0)[[0, -1]].all()  # tight
            assert phrase in s.caption
            assert phrase in {article(n) for n in names[label]}
        labelled = s.mask != BACKGROUND
        covered = np.zeros_like(labelled)
        for x0, y0, x1, y1 in s.boxes:
            covered[y0:y1, x0:x1] = True
        assert not np.any(labelled & ~covered)  # every labelled pixel lies in its item's box
        boxes = s.boxes.astype(int)
        for i in range(k):  # items never overlap
            for j in range(i + 1, k):
                ox = min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0])
                oy = min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1])
                assert ox <= 0 or oy <= 0
    assert len(set(counts)) > 1  # the number of items varies


def test_two_item_captions_state_the_relation_of_the_centres(pool):
    spec = SCENE_SETS["fashion_mnist_scenes_grid"]
    seen = 0
    for index in range(80):
        s = scene(spec, pool, "train", SIZE, index)
        if len(s.labels) != 2:
            continue
        a, b = s.phrases
        centres = (s.boxes[:, :2] + s.boxes[:, 2:]) / 2
        for first, second, (i, j) in ((a, b, (0, 1)), (b, a, (1, 0))):
            if f"{first} to the left of {second}" in s.caption:
                assert centres[i, 0] < centres[j, 0]
                seen += 1
            if f"{first} above {second}" in s.caption:
                assert centres[i, 1] < centres[j, 1]
                seen += 1
    assert seen > 0


def test_splits_draw_items_from_disjoint_parts(data_dir):
    images, labels = load_split("fashion_mnist", data_dir, "train")
    train, val = split_pool(images, labels, "train"), split_pool(images, labels, "val")
    assert len(train.labels) == 220 and len(val.labels) == 20  # 11/12 and 1/12 of 240
    np.testing.assert_array_equal(val.images, images[220:, ..., 0])
    with pytest.raises(DataError, match="no split 'dev'"):
        split_pool(images, labels, "dev")


def test_training_source_batches_resume_exactly(data_dir):
    from vlmjax.tokenizers.trained_bpe import train_bpe
    tokenizer = train_bpe(scene_texts(200), vocab_size=600)
    cfg = {"data": {"dir": data_dir, "split": "train", "phrases": True, "phrase_length": 6,
                    "num_threads": 1, "prefetch": 1},
           "model": {"image": {"image_size": SIZE, "channels": 1}},
           "train": {"batch_size": 8}, "seed": 3, "tokenizer": {"context_length": 24}}
    source = ScenesCaptions("fashion_mnist_scenes")
    source.check(cfg)
    iterator = source.build(cfg, tokenizer, slice(None), 0, 1)
    first = next(iterator)
    state = iterator.get_state()
    rest = [next(iterator) for _ in range(2)]
    resumed = source.build(cfg, tokenizer, slice(None), 0, 1)
    resumed.set_state(state)
    for want in rest:
        got = next(resumed)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    assert first["image"].shape == (8, SIZE, SIZE, 1) and first["text"].shape == (8, 24)
    assert first["phrases"].shape == (8, 4, 6) and first["phrase_mask"].dtype == bool
    # A process's rows are the same examples as in the whole batch.
    half = source.build(cfg, tokenizer, slice(4, 8), 0, 1)
    np.testing.assert_array_equal(next(half)["image"], first["image"][4:])
    # The captions decode to the scenes the batch was generated from.
    pool_images, pool_labels = load_split("fashion_mnist", data_dir, "train")
    expected = scene(SCENE_SETS["fashion_mnist_scenes"], split_pool(pool_images, pool_labels, "train"),
                     "train", SIZE, 2, seed=3)
    np.testing.assert_array_equal(first["image"][2, ..., 0], expected.image)
    letters = lambda text: re.sub(r"[^a-z]", "", text.lower())  # noqa: E731 (BPE spaces commas)
    assert letters(tokenizer.decode(first["text"][2][first["text_mask"][2]])) == \
        letters(expected.caption)
    phrases = phrase_batch(tokenizer, [expected.phrases], 4, 6)
    np.testing.assert_array_equal(phrases["phrases"][0], first["phrases"][2])
    assert phrases["phrase_mask"][0].any(axis=1).sum() == len(expected.phrases)


def test_training_source_checks(data_dir):
    source = ScenesCaptions("fashion_mnist_scenes")
    cfg = {"data": {"dir": data_dir, "split": "train", "phrases": False, "phrase_length": 6,
                    "num_threads": 1, "prefetch": 1},
           "model": {"image": {"image_size": SIZE, "channels": 3}}}
    with pytest.raises(ConfigError, match="model.image.channels is 3 but scenes are grayscale"):
        source.check(cfg)
    cfg["model"]["image"].update(channels=1, image_size=8)
    with pytest.raises(ConfigError, match="use at least 16"):
        source.check(cfg)
    cfg["model"]["image"]["image_size"] = SIZE
    cfg["data"]["dir"] = data_dir + "/missing"
    with pytest.raises(DataError, match="fashion_mnist not found"):
        source.check(cfg)


def test_evaluation_sources(data_dir):
    image = {"image_size": SIZE, "channels": 1}
    dense = open_dense_source("fashion_mnist_scenes", "test", data_dir, image, limit=10)
    assert isinstance(dense, ScenesSource) and dense.num_rows == 10 and dense.canvas == (SIZE, SIZE)
    assert dense.classnames[0] == "background" and dense.background == 0
    images, masks = dense.rows(np.arange(3))
    assert images.shape == (3, SIZE, SIZE, 1) and masks.shape == (3, SIZE, SIZE)
    boxes = dense.boxes(np.arange(3))
    for (_, classes), mask in zip(boxes, masks, strict=True):
        assert set(classes.tolist()) == set(np.unique(mask).tolist()) - {0}
    single = open_eval_source("fashion_mnist_scenes", "test_single", data_dir, image, limit=12)
    rows, labels = single.rows(np.arange(12))
    for index, label in enumerate(labels):
        s = single.scenes.scene(index)
        assert len(s.labels) == 1 and s.labels[0] == label
    assert single.classnames == eval_prompts("fashion_mnist_scenes")[0]
    assert len(single.classnames) == 10 and "background" not in single.classnames
    captions = single.image_captions()
    assert len(captions.texts) == 12 and list(captions.image) == list(range(12))
    check_eval_source("fashion_mnist_scenes", "test", data_dir, "data.dir", image=image)
    with pytest.raises(ConfigError, match="grayscale at the model's size"):
        check_eval_source("fashion_mnist_scenes", "test", data_dir, "data.dir",
                          image={"image_size": SIZE, "channels": 3})
    with pytest.raises(DataError, match="no split 'dev'"):
        check_eval_source("fashion_mnist_scenes", "dev", data_dir, "data.dir", image=image)
    with pytest.raises(DataError, match="names its classes itself"):
        open_dense_source("fashion_mnist_scenes", "test", data_dir, image, classnames_file="x.json")
