"""FGVC-Aircraft and UCF101 (middle frames): our TFDS builders from tiny fake manual directories
in the official / CoOp layouts, their splits, labels and class names, and zero-shot on them."""

import json

import numpy as np
import pytest
from flax import nnx
from PIL import Image

from tests.test_benchmarks import SIZE, PixelModel
from tests.test_zeroshot import ClassIdTokenizer
from vlmjax.data.benchmarks import benchmark_prompts, get_benchmark
from vlmjax.data.coop_splits import index_sources, tfds_sources
from vlmjax.data.manual_benchmarks import Ucf101Midframes, prepare
from vlmjax.data.tfds_images import open_split, open_tfds
from vlmjax.errors import DataError
from vlmjax.evaluators.zeroshot import ZeroShotClassification
from vlmjax.parallel.mesh import make_mesh

from .eval_contexts import make_eval_context


def _image(path, red: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((10, 14, 3), red, np.uint8)).save(path, format="PNG")  # lossless


def _fgvc_manual(root, variants: list[str]):
    """Official layout: (image id, variant index, red level) per split; test image 3 is planted
    to be misclassified (its red level is not its label)."""
    splits = {"train": [("1000001", 0, 0), ("1000002", 99, 99)], "val": [("1000003", 42, 42)],
              "test": [("1000004", 5, 5), ("1000005", 73, 7)]}
    for split, rows in splits.items():
        for image_id, _, red in rows:
            _image(root / "images" / f"{image_id}.jpg", red)
        (root / f"images_variant_{split}.txt").write_text(
            "".join(f"{image_id} {variants[label]}\n" for image_id, label, _ in rows))
    (root / "variants.txt").write_text("\n".join(variants) + "\n")
    return splits


def _ucf_manual(root):
    """CoOp's layout: middle frames in underscore-separated class folders and its split file."""
    items = {"train": [["Apply_Eye_Makeup/v_ApplyEyeMakeup_g08_c01.jpg", 0, "Apply_Eye_Makeup"]],
             "val": [["Yo_Yo/v_YoYo_g09_c02.jpg", 100, "Yo_Yo"]],
             "test": [["Handstand_Pushups/v_HandStandPushups_g01_c01.jpg", 36, "Handstand_Pushups"],
                      ["Yo_Yo/v_YoYo_g01_c01.jpg", 100, "Yo_Yo"]]}
    for rows in items.values():
        for path, label, _ in rows:
            _image(root / "UCF-101-midframes" / path, label)
    (root / "split_zhou_UCF101.json").write_text(json.dumps(items))
    return items


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("manual")
    fgvc = _fgvc_manual(root / "fgvc-aircraft-2013b" / "data", get_benchmark("fgvc_aircraft").classnames)
    ucf = _ucf_manual(root / "ucf101")
    data_dir = str(root / "tfds")
    prepare("fgvc_aircraft", str(root / "fgvc-aircraft-2013b" / "data"), data_dir)
    prepare("ucf101", str(root / "ucf101"), data_dir)
    return data_dir, fgvc, ucf


def _read_back(name: str, data_dir: str) -> dict[str, dict[str, int]]:
    """split -> {file name: label} of every registered split, read through open_split."""
    sources = {split: open_split(name, split, data_dir) for split in get_benchmark(name).splits}
    return {split: {s[i]["file_name"].decode(): int(s[i]["label"]) for i in range(len(s))}
            for split, s in sources.items()}


def test_fgvc_aircraft_builder_keeps_the_official_splits_and_variant_labels(prepared):
    data_dir, fgvc, _ = prepared
    assert _read_back("fgvc_aircraft", data_dir) == {
        split: {f"images/{image_id}.jpg": label for image_id, label, _ in rows}
        for split, rows in fgvc.items()}
    classnames, templates = benchmark_prompts("fgvc_aircraft")
    assert classnames[0] == "707-320" and classnames[99] == "Yak-42" and "F/A-18" in classnames
    assert templates == ["a photo of a {c}, a type of aircraft."]
    # Sliced TFDS splits read from array_record (what EuroSAT's VTAB splits rely on).
    assert len(open_tfds(get_benchmark("fgvc_aircraft"), "test[1:]", data_dir)) == 1


def test_ucf101_builder_reads_coop_split_file_and_names_classes_in_words(prepared):
    data_dir, _, ucf = prepared
    assert _read_back("ucf101", data_dir) == {
        split: {f"UCF-101-midframes/{path}": label for path, label, _ in rows}
        for split, rows in ucf.items()}
    classnames, templates = benchmark_prompts("ucf101")
    assert (classnames[0], classnames[36], classnames[100]) == \
        ("Apply Eye Makeup", "Handstand Pushups", "Yo Yo")
    assert templates == ["a photo of a person doing {c}."]


def test_ucf101_official_lists_give_train_and_test(tmp_path):
    lists = tmp_path / "ucfTrainTestlist"
    lists.mkdir()
    names = get_benchmark("ucf101").classnames
    (lists / "classInd.txt").write_text("".join(f"{i + 1} {n}\n" for i, n in enumerate(names)))
    (lists / "trainlist01.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\n")
    (lists / "testlist01.txt").write_text("HandstandPushups/v_HandStandPushups_g01_c01.avi\n"
                                          "YoYo/v_YoYo_g01_c01.avi\n")
    items = Ucf101Midframes(data_dir=str(tmp_path / "tfds")).split_items(str(tmp_path))
    assert items == {"train": [("UCF-101-midframes/Apply_Eye_Makeup/v_ApplyEyeMakeup_g08_c01.jpg", 0)],
                     "test": [("UCF-101-midframes/Handstand_Pushups/v_HandStandPushups_g01_c01.jpg", 36),
                              ("UCF-101-midframes/Yo_Yo/v_YoYo_g01_c01.jpg", 100)]}


def test_manual_directories_that_do_not_match_are_errors(tmp_path):
    variants = list(get_benchmark("fgvc_aircraft").classnames)
    _fgvc_manual(tmp_path / "renamed", variants[:99] + ["Yak-42 (renamed)"])
    with pytest.raises(DataError, match=r"lists 100 classes that are not the registry's 100 "
                       r"fgvc_aircraft classes in order \(e.g. \[\"'Yak-42 \(renamed\)' vs 'Yak-42'"):
        prepare("fgvc_aircraft", str(tmp_path / "renamed"), str(tmp_path / "tfds"))
    _fgvc_manual(tmp_path / "partial", variants)
    (tmp_path / "partial" / "images" / "1000004.jpg").unlink()
    with pytest.raises(DataError, match=r"1 images listed for fgvc_aircraft are missing .*1000004"):
        prepare("fgvc_aircraft", str(tmp_path / "partial"), str(tmp_path / "tfds"))


@pytest.mark.parametrize("name", ["fgvc_aircraft", "ucf101"])
def test_zero_shot_reads_the_prepared_builders(prepared, name):
    data_dir, fgvc, ucf = prepared
    classnames = benchmark_prompts(name)[0]
    config = {"data": {"dir": "", "image_mean": 0.0, "image_std": 1.0},
              "model": {"name": "two_tower", "image": {"image_size": SIZE, "channels": 3}}}
    ctx = make_eval_context(config, graphdef=nnx.split(PixelModel(len(classnames)))[0],
                      tokenizer=ClassIdTokenizer(classnames), context_length=4,
                      mesh=make_mesh({"data": -1, "fsdp": 1, "tensor": 1}),
                      rules=(("batch", ("data", "fsdp")),))
    metrics = ZeroShotClassification({"dataset": name, "split": "test", "batch_size": 8,
                                      "data_dir": data_dir}, ctx).run({})
    # FGVC: one of its two test images is planted wrong; UCF101's frames are all right.
    assert metrics["acc1"] == pytest.approx(0.5 if name == "fgvc_aircraft" else 1.0)


def test_file_name_index_reads_prepared_splits_with_images_encoded(prepared):
    """What CoOp split files are matched with, on real array_record files (FGVC's builder)."""
    data_dir, fgvc, _ = prepared
    benchmark = get_benchmark("fgvc_aircraft")
    sources = tfds_sources(benchmark, data_dir)
    index = index_sources(sources, benchmark.classnames,
                          {"file_feature": "file_name", "tfds_key": "{split}/{stem}/{label}"})
    assert set(index) == {f"{split}/{image_id}/{benchmark.classnames[label]}".lower()
                          for split, rows in fgvc.items() for image_id, label, _ in rows}
    split, row = index["test/1000005/f/a-18"]
    assert isinstance(sources[split][row]["image"], bytes)
