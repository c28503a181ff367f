"""CoOp's split files over TFDS datasets: rows, labels and class names from the file, images found
by file name in (fake, in-memory) TFDS sources with the real datasets' label names, and zero-shot
on them end to end."""

import io
import json

import numpy as np
import pytest
import tensorflow_datasets as tfds
from flax import nnx
from PIL import Image

from tests.test_benchmarks import SIZE, PixelModel
from tests.test_zeroshot import ClassIdTokenizer
from vlmjax.data import coop_splits
from vlmjax.data.benchmarks import benchmarks, get_benchmark
from vlmjax.data.coop_splits import CoopSplitSource
from vlmjax.data.eval_sources import check_eval_source, eval_prompts, open_eval_source
from vlmjax.data.tfds_images import decoded, tfds_info, tfds_label_names
from vlmjax.errors import DataError
from vlmjax.evaluators.zeroshot import ZeroShotClassification
from vlmjax.parallel.mesh import make_mesh

from .eval_contexts import make_eval_context

# CoOp's Caltech101 split: 3 classes here, named and numbered as CoOp does (TFDS: 102 classes).
CALTECH = {"train": [["Faces/image_0003.jpg", 1, "face"], ["accordion/image_0001.jpg", 0, "accordion"]],
           "val": [["Leopards/image_0002.jpg", 2, "leopard"]],
           "test": [["Faces/image_0001.jpg", 1, "face"], ["Leopards/image_0002.jpg", 2, "leopard"],
                    ["accordion/image_0001.jpg", 0, "accordion"]]}


def _png(red: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.full((6, 8, 3), red, np.uint8)).save(out, format="PNG")
    return out.getvalue()


def _caltech_sources() -> dict[str, list[dict]]:
    """TFDS-like caltech101 splits: basenames repeat across classes; red level = a row's identity."""
    label = {n: i for i, n in enumerate(tfds_label_names(get_benchmark("caltech101")))}
    row = lambda file, name, red: {"image": _png(red), "label": label[name], "image/file_name": file}
    return {"train": [row("image_0003.jpg", "faces", 7), row("image_0001.jpg", "accordion", 4),
                      row("image_0002.jpg", "leopards", 2)],
            "test": [row("image_0001.jpg", "background_google", 9), row("image_0001.jpg", "faces", 1)]}


@pytest.fixture
def fake_tfds(monkeypatch):
    """Replaces the prepared TFDS splits by in-memory sources: {benchmark name: {split: rows}}."""
    fakes = {}
    monkeypatch.setattr(coop_splits, "tfds_sources", lambda benchmark, data_dir: fakes[benchmark.name])
    coop_splits._opened.cache_clear()
    yield fakes
    coop_splits._opened.cache_clear()


def _write(path, items) -> str:
    path.write_text(json.dumps(items))
    return str(path)


def test_rows_labels_and_names_are_coops_in_file_order(fake_tfds, tmp_path):
    fake_tfds["caltech101"] = _caltech_sources()
    split_file = _write(tmp_path / "split_zhou_Caltech101.json", CALTECH)
    assert eval_prompts("caltech101", split_file=split_file)[0] == ["accordion", "face", "leopard"]
    for split, reds in (("test", [1, 2, 4]), ("train", [7, 4]), ("val", [2])):
        source = CoopSplitSource("caltech101", split, "", str(tmp_path))  # the folder works too
        rows = [source[i] for i in range(len(source))]
        assert [r["label"] for r in rows] == [label for _, label, _ in CALTECH[split]]
        assert [int(decoded(r["image"])[0, 0, 0]) for r in rows] == reds
        # The eval source over it: CoOp's labels without decoding, rows at the model's size.
        eval_source = open_eval_source("caltech101", split, "", {"image_size": 4, "channels": 3},
                                       split_file=split_file)
        labels = [label for _, label, _ in CALTECH[split]]
        assert eval_source.num_classes == 3 and eval_source.labels().tolist() == labels
        images, row_labels = eval_source.rows(np.arange(len(labels)))
        assert images.shape == (len(labels), 4, 4, 3) and row_labels.tolist() == labels
        assert images[:, 0, 0, 0].tolist() == reds  # uniform images keep their colour
    check_eval_source("caltech101", "test", "", "evals.caltech101.data_dir", split_file=split_file)


def test_zero_shot_on_a_coop_split(fake_tfds, tmp_path):
    fake_tfds["caltech101"] = _caltech_sources()
    split_file = _write(tmp_path / "split.json", CALTECH)
    config = {"data": {"dir": "", "image_mean": 0.0, "image_std": 1.0},
              "model": {"name": "two_tower", "image": {"image_size": SIZE, "channels": 3}}}
    ctx = make_eval_context(config, graphdef=nnx.split(PixelModel(3))[0],
                      tokenizer=ClassIdTokenizer(["accordion", "face", "leopard"]), context_length=4,
                      mesh=make_mesh({"data": -1, "fsdp": 1, "tensor": 1}),
                      rules=(("batch", ("data", "fsdp")),))
    metrics = ZeroShotClassification({"dataset": "caltech101", "split": "test", "batch_size": 8,
                                      "split_file": split_file}, ctx).run({})
    # Reds 1, 2, 4 predict classes 1, 2, 1 (red mod 3) for CoOp labels 1, 2, 0.
    assert metrics["acc1"] == pytest.approx(2 / 3)
    assert metrics["mean_per_class_recall"] == pytest.approx(2 / 3)


def test_cars_paths_are_qualified_by_their_split_folder(fake_tfds, tmp_path):
    row = lambda red: {"image": _png(red), "label": 0, "id": "00001"}
    fake_tfds["stanford_cars"] = {"train": [row(10)], "test": [row(20)]}
    name = "AM General Hummer SUV 2000"
    split_file = _write(tmp_path / "cars.json", {"train": [["cars_train/00001.jpg", 0, name]],
                                                 "test": [["cars_test/00001.jpg", 0, name]]})
    for split, red in (("train", 10), ("test", 20)):
        image = CoopSplitSource("stanford_cars", split, "", split_file)[0]["image"]
        assert int(decoded(image)[0, 0, 0]) == red


def test_what_cannot_be_matched_is_an_error(fake_tfds, tmp_path):
    fake_tfds["caltech101"] = _caltech_sources()
    unmatched = dict(CALTECH, test=CALTECH["test"] + [["Faces/image_0099.jpg", 1, "face"]])
    with pytest.raises(DataError, match=r"1 of 4 images of CoOp's test split .* not in caltech101 "
                       r".*\['Faces/image_0099.jpg'\]"):
        CoopSplitSource("caltech101", "test", "", _write(tmp_path / "a.json", unmatched))
    renamed = dict(CALTECH, val=[["Leopards/image_0002.jpg", 2, "leopards"]])
    with pytest.raises(DataError, match="label 2 is named both 'leopards' and 'leopard'"):
        eval_prompts("caltech101", split_file=_write(tmp_path / "b.json", renamed))
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"caltech101": ["a", "b"]}))
    with pytest.raises(DataError, match=r"2 class names for caltech101, whose CoOp split file .* has 3"):
        eval_prompts("caltech101", str(names), split_file=str(tmp_path / "a.json"))
    with pytest.raises(DataError, match=r"does not exist; download split_zhou_Caltech101.json"):
        eval_prompts("caltech101", split_file=str(tmp_path / "missing.json"))
    with pytest.raises(DataError, match="TFDS's food101 examples carry no file name"):
        CoopSplitSource("food101", "test", "", _write(tmp_path / "food.json", CALTECH))
    with pytest.raises(DataError, match="imagenet has no CoOp split definition"):
        eval_prompts("imagenet", split_file=str(tmp_path / "a.json"))
    with pytest.raises(DataError, match="applies to registered benchmarks, not to the on-disk"):
        eval_prompts("fashion_mnist", split_file=str(tmp_path / "a.json"))
    twice = _caltech_sources()
    twice["test"].append(twice["train"][0])
    fake_tfds["caltech101"] = twice
    coop_splits._opened.cache_clear()
    with pytest.raises(DataError, match="two examples of test and train match the CoOp key "
                       "'faces/image_0003.jpg'"):
        CoopSplitSource("caltech101", "test", "", str(tmp_path / "a.json"))


@pytest.mark.parametrize("name", sorted(n for n, b in benchmarks().items()
                                        if b.coop and "unmatchable" not in b.coop))
def test_registry_coop_rules_name_real_tfds_features(name):
    benchmark = get_benchmark(name)
    assert isinstance(tfds_info(benchmark).features[benchmark.coop["file_feature"]], tfds.features.Text)
    fields = dict(path="p", dir="d", base="b", stem="s")
    benchmark.coop["tfds_key"].format(label="l", split="train", **fields)
    benchmark.coop["coop_key"].format(**fields)
    assert benchmark.coop["split_file"].startswith("split_zhou_")
