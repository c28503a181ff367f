"""Offline settings where transfer has something to add: `data.fraction` subsets, the coarse
Fashion-MNIST captions (data.name=fashion_mnist_coarse), scikit-learn's digits as an on-disk
dataset, and the shipped study (configs/study/objectives_fashion_mnist.py) validating."""

import importlib.util
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO
from vlmjax.config import validate
from vlmjax.data import digits
from vlmjax.data.captions import build_caption_table
from vlmjax.data.datasets import caption_vocabulary, check_dataset, dataset_prompts, load_split
from vlmjax.data.labelled_source import subset_rows
from vlmjax.data.registry import get_train_source
from vlmjax.errors import ConfigError, DataError
from vlmjax.tokenizers import build_tokenizer

# The grouping the coarse captions use, written out by hand (Fashion-MNIST's label order).
FINE = ["t-shirt", "trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
        "ankle boot"]
GROUP = {"t-shirt": "top", "pullover": "top", "coat": "top", "shirt": "top",
         "trousers": "bottoms", "dress": "dress", "sandal": "footwear", "sneaker": "footwear",
         "ankle boot": "footwear", "bag": "bag"}
# The coarse class names zero-shot on the groups uses.
COARSE_NAME = {"top": "top", "bottoms": "pair of bottoms", "dress": "dress", "footwear": "shoe",
               "bag": "bag"}
STUDY = os.path.join(REPO, "configs", "study", "objectives_fashion_mnist.py")


# ---- data.fraction ---------------------------------------------------------------------------

def test_fraction_subsets_are_nested_counted_and_fixed():
    n = 60_000
    subsets = {f: subset_rows(n, f) for f in (0.05, 0.2, 0.5, 1.0)}
    for f, rows in subsets.items():
        assert len(rows) == round(f * n) and len(np.unique(rows)) == len(rows)
        assert rows.min() >= 0 and rows.max() < n
    assert np.array_equal(subsets[1.0], np.arange(n))
    for small, large in ((0.05, 0.2), (0.2, 0.5), (0.5, 1.0)):
        assert np.isin(subsets[small], subsets[large]).all()
    # A fixed order, the same in every call (no seed, no generator state), and not a prefix of
    # the stored order: the 5% spans the whole split.
    np.testing.assert_array_equal(subset_rows(n, 0.05), subsets[0.05])
    assert subsets[0.05].max() > 0.9 * n and subsets[0.05].min() < 0.1 * n


def test_fraction_trains_only_on_its_subset(tiny_config, synthetic_data_dir):
    images, labels = load_split("fashion_mnist", synthetic_data_dir, "train")
    tiny_config.data.fraction = 0.25
    cfg = tiny_config.to_dict()
    keep = subset_rows(len(labels), 0.25)
    allowed = {images[i].tobytes() for i in keep}
    tokenizer = build_tokenizer("trained_bpe", vocab_size=600,
                                texts=get_train_source(cfg["data"]).caption_texts(cfg))
    seen = set()
    for seed in (0, 1):  # the subset does not depend on the run's seed
        cfg["seed"] = seed
        iterator = get_train_source(cfg["data"]).build(cfg, tokenizer, slice(None), 0, 1)
        for _ in range(len(keep) // cfg["train"]["batch_size"] * 2):  # two epochs
            seen |= {image.tobytes() for image in next(iterator)["image"]}
    assert seen == allowed  # every subset image, and nothing else


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5])
def test_fraction_outside_0_1_is_one_config_error(tiny_config, fraction):
    tiny_config.data.fraction = fraction
    with pytest.raises(ConfigError) as e:
        validate(tiny_config, jax.device_count())
    assert str(e.value) == (f"config.data.fraction is {fraction}; use a fraction of the split in "
                            "(0, 1]")


def test_fraction_of_no_image_is_a_data_error():
    with pytest.raises(DataError, match=r"data.fraction=0.0001 of 600 images is none"):
        subset_rows(600, 1e-4)


# ---- coarse captions -------------------------------------------------------------------------

def test_coarse_labels_are_the_groups_of_the_fine_labels(synthetic_data_dir):
    groups, _ = dataset_prompts("fashion_mnist_coarse")
    for split in ("train", "test"):
        images, fine = load_split("fashion_mnist", synthetic_data_dir, split)
        coarse_images, coarse = load_split("fashion_mnist_coarse", synthetic_data_dir, split)
        np.testing.assert_array_equal(coarse_images, images)
        assert [groups[c] for c in coarse] == [COARSE_NAME[GROUP[FINE[f]]] for f in fine]


def test_coarse_captions_never_name_the_fine_classes_of_multi_class_groups():
    names, templates = caption_vocabulary("fashion_mnist_coarse")
    assert len(names) == 5
    for class_names in names:
        texts = [t.format(c=n) for n in class_names for t in templates]
        for fine in FINE:
            if fine in ("dress", "bag"):  # a group of one class is named like it
                continue
            assert not any(fine in text for text in texts), fine


def test_coarse_source_captions_each_image_by_its_group_and_its_tokenizer_knows_the_fine_names(
        tiny_config, synthetic_data_dir):
    tiny_config.data.name = "fashion_mnist_coarse"
    tiny_config.tokenizer.context_length = 40  # no caption cut short: ids name one caption
    cfg = tiny_config.to_dict()
    source = get_train_source(cfg["data"])
    texts = source.caption_texts(cfg)
    fine_names, fine_templates = dataset_prompts("fashion_mnist")
    # the tokenizer learns the fine classes' prompts as well as the captions
    for name in fine_names:
        assert fine_templates[0].format(c=name) in texts
    tokenizer = build_tokenizer("trained_bpe", vocab_size=600, texts=texts)
    table = build_caption_table(*caption_vocabulary("fashion_mnist_coarse"), tokenizer,
                                cfg["tokenizer"]["context_length"])
    by_ids = {table.ids[i].tobytes(): table.texts[i] for i in range(len(table.texts))}
    assert len(by_ids) == len(table.texts)
    images, fine = load_split("fashion_mnist", synthetic_data_dir, "train")
    label_of = {image.tobytes(): label for image, label in zip(images, fine, strict=True)}
    group_names = caption_vocabulary("fashion_mnist_coarse")[0]
    coarse_names, _ = dataset_prompts("fashion_mnist_coarse")
    iterator = source.build(cfg, tokenizer, slice(None), 0, 1)
    for _ in range(3):
        batch = next(iterator)
        for image, ids, label in zip(batch["image"], batch["text"], batch["label"], strict=True):
            caption = by_ids[ids.tobytes()]
            group = GROUP[FINE[label_of[image.tobytes()]]]
            assert coarse_names[label] == COARSE_NAME[group]  # the batch's label is the group
            assert any(name in caption for name in group_names[label]), caption


# ---- digits ----------------------------------------------------------------------------------

needs_sklearn = pytest.mark.skipif(importlib.util.find_spec("sklearn") is None,
                                   reason="scikit-learn is not installed (pip install -e .[test])")


@needs_sklearn
def test_digits_splits_shapes_labels_and_determinism():
    from sklearn.datasets import load_digits
    reference = load_digits()
    train_images, train_labels = load_split("digits", "", "train")
    test_images, test_labels = load_split("digits", "", "test")
    assert train_images.shape == (1201, 28, 28, 1) and test_images.shape == (596, 28, 28, 1)
    assert train_images.dtype == np.uint8 and train_labels.dtype == np.int32
    # together the splits are the 1,797 images, each class split 2:1 (every third is a test image)
    np.testing.assert_array_equal(np.bincount(train_labels) + np.bincount(test_labels),
                                  np.bincount(reference.target))
    counts = np.bincount(reference.target)
    np.testing.assert_array_equal(np.bincount(test_labels), counts // 3)
    # the test split, recomputed by hand: for class k, its 3rd, 6th, ... image in file order
    expected = [i for k in range(10) for j, i in enumerate(np.flatnonzero(reference.target == k))
                if j % 3 == 2]
    expected.sort()
    np.testing.assert_array_equal(test_labels, reference.target[expected])
    # each image is its 8x8 source upsampled bilinearly by 3 (PIL's filter) inside a 2-pixel margin
    for row, source in ((0, expected[0]), (100, expected[100]), (595, expected[595])):
        picture = Image.fromarray((reference.images[source] * 255 / 16).astype(np.float32), "F")
        resized = np.asarray(picture.resize((24, 24), Image.Resampling.BILINEAR))
        image = test_images[row, :, :, 0].astype(np.float64)
        assert np.abs(image[2:26, 2:26] - resized).max() <= 1.0  # uint8 rounding
        assert not image[:2].any() and not image[26:].any()
        assert not image[:, :2].any() and not image[:, 26:].any()
    again_images, again_labels = load_split("digits", "/elsewhere", "test")
    np.testing.assert_array_equal(again_images, test_images)
    np.testing.assert_array_equal(again_labels, test_labels)


@needs_sklearn
def test_digits_prompts_and_unknown_split():
    classnames, templates = dataset_prompts("digits")
    assert classnames == [str(k) for k in range(10)] and all("{c}" in t for t in templates)
    with pytest.raises(DataError, match=r"digits has no split 'val'; choose one of train, test"):
        check_dataset("digits", "", split="val")


def test_digits_without_scikit_learn_is_one_data_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "sklearn" else real(name, *a))
    digits._all_digits.cache_clear()
    try:
        for call in (lambda: check_dataset("digits", "", split="test"),
                     lambda: load_split("digits", "", "train")):
            with pytest.raises(DataError) as e:
                call()
            assert "\n" not in str(e.value) and "`pip install scikit-learn`" in str(e.value)
    finally:
        digits._all_digits.cache_clear()


# ---- the shipped study -----------------------------------------------------------------------

def test_the_shipped_study_validates_every_run(tmp_path, synthetic_data_dir):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "VLMJAX_"))}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=REPO,
               XLA_FLAGS="--xla_force_host_platform_device_count=1")
    done = subprocess.run([sys.executable, "-m", "vlmjax.study", "--config", STUDY, "--workdir",
                           str(tmp_path / "study"), "--dry_run", "--devices", "1",
                           f"--config.data.dir={synthetic_data_dir}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"24 runs in {tmp_path / 'study'} (0 finished)")
    names = [line.split()[-1] for line in lines[1:25]]
    assert len(set(names)) == 24
    for objective in ("clip", "siglip", "coca", "filip"):
        for size in ("small", "demo"):
            for fraction in ("0.05", "0.2", "1.0"):
                assert f"objective={objective},size={size},fraction={fraction}" in names
    assert not (tmp_path / "study").exists()  # a dry run writes nothing


def test_the_study_base_configs_choose_the_coarse_source_and_the_suite_per_objective():
    from vlmjax.config import load_config_file
    for objective in ("clip", "siglip", "coca", "filip"):
        config = load_config_file(f"{STUDY}:{objective}")
        assert config.data.name == "fashion_mnist_coarse" and config.objective.name == objective
        evals = config.evals.to_dict()
        assert {e["dataset"] for e in evals.values()} == {"fashion_mnist", "fashion_mnist_coarse",
                                                          "digits"}
        kinds = {e["kind"] for e in evals.values()}
        if objective == "filip":  # no text embedding per class: no methods that need one
            assert kinds == {"zeroshot", "linear_probe", "fewshot"}
            assert all(set(e["methods"]) == {"linear_probe", "closed_form"}
                       for e in evals.values() if e["kind"] == "fewshot")
        else:
            assert kinds == {"zeroshot", "linear_probe", "fewshot", "unsupervised"}
    with pytest.raises(ConfigError, match="unknown objective 'lit'"):
        load_config_file(f"{STUDY}:lit")
