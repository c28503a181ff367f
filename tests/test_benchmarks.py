"""The benchmark registry and TFDS access: every registered dataset's class names and templates,
name cleaning, the evaluation transform, a clear error for an unprepared dataset, and every
benchmark's zero-shot pipeline end to end on tfds mock data (nothing on disk)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from flax import nnx

from tests.test_zeroshot import ClassIdTokenizer
from vlmjax.data.benchmark_prompts import benchmark_prompts
from vlmjax.data.benchmarks import benchmarks, clean_name
from vlmjax.data.eval_sources import open_eval_source
from vlmjax.data.tfds_images import eval_transform, num_classes, open_split
from vlmjax.errors import DataError
from vlmjax.evaluators.zeroshot import ZeroShotClassification
from vlmjax.parallel.mesh import make_mesh

from .eval_contexts import make_eval_context

SIZE = 16
LABELLED = sorted(name for name, b in benchmarks().items() if b.labelled)


def _classnames_file(tmp_path, name: str) -> str:
    """A CLIP_benchmark-format file of made-up names for benchmarks whose TFDS names are ids."""
    path = tmp_path / f"{name}_classnames.json"
    path.write_text(json.dumps({name: [f"thing {i}" for i in range(num_classes(benchmarks()[name]))]}))
    return str(path)


def _prompts(tmp_path, name: str) -> tuple[list[str], list[str], str]:
    needs_file = isinstance(benchmarks()[name].classnames, dict)
    path = _classnames_file(tmp_path, name) if needs_file else ""
    return (*benchmark_prompts(name, classnames_file=path), path)


@pytest.mark.parametrize("name", LABELLED)
def test_registry_entry_has_one_distinct_name_per_label_and_templates(tmp_path, name):
    classnames, templates, _ = _prompts(tmp_path, name)
    assert len(classnames) == num_classes(benchmarks()[name])
    assert len(set(classnames)) == len(classnames)
    assert templates and all("{c}" in t for t in templates)
    assert "test" in benchmarks()[name].splits or "train" in benchmarks()[name].splits


def test_name_cleaning_rules():
    assert clean_name("/b/bakery/shop", ("sun397_path", "underscores")) == "bakery shop"
    assert clean_name("/a/apartment_building/outdoor", ("sun397_path", "underscores")) == \
        "apartment building outdoor"
    assert clean_name("HerbaceousVegetation", ("camel_case", "lower")) == "herbaceous vegetation"
    assert clean_name("american_pit_bull_terrier", ("underscores", "lower")) == \
        "american pit bull terrier"


def test_user_files_and_their_errors(tmp_path):
    with pytest.raises(DataError, match="needs evals.<name>.classnames_file: TFDS names ImageNet"):
        benchmark_prompts("imagenet")
    short = tmp_path / "short.json"
    short.write_text(json.dumps({"imagenet1k": ["tench", "goldfish"]}))  # CLIP_benchmark's key
    with pytest.raises(DataError, match="2 class names for imagenet, whose TFDS labels .* 1000"):
        benchmark_prompts("imagenet", classnames_file=str(short))
    templates = tmp_path / "templates.json"
    templates.write_text(json.dumps({"vtab/dtd": ["a photo of a {c} texture.", "{c}."]}))
    assert benchmark_prompts("dtd", templates_file=str(templates))[1] == \
        ["a photo of a {c} texture.", "{c}."]
    templates.write_text(json.dumps({"cars": ["{c}"]}))
    with pytest.raises(DataError, match="no entry for 'dtd' or 'vtab/dtd'"):
        benchmark_prompts("dtd", templates_file=str(templates))
    with pytest.raises(DataError, match="benchmark 'imagenet1k' is not registered"):
        benchmark_prompts("imagenet1k")


def test_unprepared_benchmark_names_the_command_that_prepares_it(tmp_path):
    with pytest.raises(DataError, match=r"dtd .* is not prepared .* prepare it with: pip install "
                       r"tensorflow && tfds build dtd --file_format=array_record --data_dir=" +
                       str(tmp_path)):
        open_split("dtd", "test", str(tmp_path))
    with pytest.raises(DataError, match="ILSVRC2012_img_val.tar"):
        open_split("imagenet", "test", str(tmp_path))
    with pytest.raises(DataError, match="imagenet_v2 has no split 'train'; choose one of test"):
        open_split("imagenet_v2", "train", str(tmp_path))
    with pytest.raises(DataError, match=r"fgvc_aircraft .* is not prepared .*`python -m "
                       r"vlmjax.data.manual_benchmarks --dataset fgvc_aircraft"):
        open_split("fgvc_aircraft", "test", str(tmp_path))


def test_eval_transform_resizes_the_shorter_side_and_centre_crops():
    image = np.zeros((40, 20, 3), np.uint8)
    image[:, :, 0] = np.arange(40)[:, None] * 6  # a vertical ramp in red
    out = eval_transform(image, 10, 3)
    assert out.shape == (10, 10, 3)
    # 20 -> 10 wide (x0.5), 40 -> 20 tall, then rows 5..14 are kept: the ramp's middle half.
    assert 50 < out[0, 5, 0] < 70 and 160 < out[-1, 5, 0] < 180
    gray = eval_transform(image, 10, 1)
    assert gray.shape == (10, 10, 1)


class PixelModel(nnx.Module):
    """Predicts class (red value of pixel (0, 0)) mod C; text embedding = one-hot class id."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes

    def encode_image(self, images):
        value = jnp.round(images[:, 0, 0, 0] * 255.0).astype(jnp.int32)
        return jax.nn.one_hot(value % self.num_classes, self.num_classes)

    def encode_text(self, ids, mask):
        return jax.nn.one_hot(ids[:, 0], self.num_classes)


def test_every_benchmark_zero_shot_end_to_end_on_mock_data(tmp_path):
    mesh = make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    config = {"data": {"dir": "", "image_mean": 0.0, "image_std": 1.0},
              "model": {"name": "two_tower", "image": {"image_size": SIZE, "channels": 3}}}
    with tfds.testing.mock_data(num_examples=13):  # 13 rows: a padded last batch of 8
        for name in LABELLED:
            classnames, _, path = _prompts(tmp_path, name)
            split = "test" if "test" in benchmarks()[name].splits else "train"
            c = len(classnames)
            ctx = make_eval_context(config, graphdef=nnx.split(PixelModel(c))[0],
                              tokenizer=ClassIdTokenizer(classnames), context_length=4, mesh=mesh,
                              rules=(("batch", ("data", "fsdp")),))
            evaluator = ZeroShotClassification(
                {"dataset": name, "split": split, "batch_size": 8, "classnames_file": path}, ctx)
            metrics = evaluator.run({})
            # The same examples read and transformed independently, scored in NumPy.
            source = tfds.data_source(benchmarks()[name].tfds, split=benchmarks()[name].splits[split],
                                      download=False)
            labels = np.array([int(source[i]["label"]) for i in range(13)])
            predicted = np.array([int(eval_transform(np.asarray(source[i]["image"]), SIZE, 3)[0, 0, 0]) % c
                                  for i in range(13)])
            assert metrics["acc1"] == pytest.approx(np.mean(predicted == labels)), name
            present = np.unique(labels)
            assert metrics["mean_per_class_recall"] == pytest.approx(
                np.mean([np.mean(predicted[labels == k] == k) for k in present])), name
            assert ("acc5" in metrics) == (c >= 5)


def test_config_validation_reads_benchmarks_before_compiling(tiny_config, tmp_path):
    from vlmjax.config.validate import validate
    tiny_config.evals.imagenet = dict(kind="zeroshot", dataset="imagenet", split="test",
                                      batch_size=8)
    with pytest.raises(DataError, match="ILSVRC2012_img_val.tar"):  # not prepared (no mock)
        validate(tiny_config, 8)
    with tfds.testing.mock_data(num_examples=4):
        with pytest.raises(DataError, match="needs evals.<name>.classnames_file"):
            validate(tiny_config, 8)
        tiny_config.evals.imagenet.classnames_file = _classnames_file(tmp_path, "imagenet")
        validate(tiny_config, 8)
        tiny_config.evals.imagenet.dataset = "imagenet1k"
        with pytest.raises(DataError, match="neither an on-disk dataset .* nor a registered"):
            validate(tiny_config, 8)


def test_suite_config_evaluates_a_run_on_every_benchmark(tiny_config, tmp_path):
    """`evaluate --config configs/eval/zeroshot_suite.py` keeps the run's model, takes the
    suite's evaluators (validated before anything compiles)."""
    import os

    from tests.conftest import REPO
    from vlmjax.config import config_from_args
    from vlmjax.config.validate import validate
    from vlmjax.errors import ConfigError
    suite = os.path.join(REPO, "configs", "eval", "zeroshot_suite.py")
    classnames = _classnames_file(tmp_path, "imagenet")
    config = config_from_args(f"{suite}:{classnames}", ["evals.dtd.batch_size=64"], base=tiny_config)
    assert config.model.to_dict() == tiny_config.model.to_dict()
    assert sorted(config.evals) == sorted(["imagenet", "caltech101", "oxford_pets", "stanford_cars",
                                           "flowers102", "food101", "fgvc_aircraft", "sun397",
                                           "dtd", "eurosat", "ucf101"])
    assert config.evals.dtd.batch_size == 64 and config.evals.imagenet.classnames_file == classnames
    with tfds.testing.mock_data(num_examples=4):
        validate(config, 8)
    without = config_from_args(f"{suite}:without_imagenet", [], base=tiny_config)
    assert "imagenet" not in without.evals
    with pytest.raises(ConfigError, match="is an evaluation suite"):
        config_from_args(suite, [])


def test_a_benchmark_source_serves_rows_and_class_captions_on_mock_data():
    with tfds.testing.mock_data(num_examples=13):
        source = open_eval_source("dtd", "test", "", {"image_size": SIZE, "channels": 3}, limit=11)
        images, labels = source.rows(np.arange(11))
        assert source.num_rows == 11 and images.shape == (11, SIZE, SIZE, 3)
        raw = tfds.data_source("dtd", split="test", download=False)
        assert labels.tolist() == [int(raw[i]["label"]) for i in range(11)]
        captions = source.class_captions()
        assert captions.names == [[name] for name in source.classnames]
        assert captions.templates == source.templates == list(benchmarks()["dtd"].templates)
        assert source.num_classes == 47 and source.image_captions() is None


def test_captioned_sets_have_no_classes(tiny_config):
    from vlmjax.config.validate import validate
    with pytest.raises(DataError, match="coco has no class labels .* kind 'retrieval' or 'captioning'"):
        benchmark_prompts("coco")
    tiny_config.evals.coco = dict(kind="zeroshot", dataset="coco")
    with pytest.raises(DataError, match="coco has no class labels"):
        validate(tiny_config, 8)
