"""FGVC-Aircraft and UCF101 (middle frames): our TFDS builders from tiny fake manual directories
in the official / CoOp layouts, their splits, labels and class names, and zero-shot on them."""

import json

import numpy as np
import pytest
from flax import nnx
from PIL import Image

from tests.test_benchmarks import SIZE, PixelModel
from tests.test_zeroshot import ClassIdTokenizer
from vlmjax.data.benchmark_prompts import benchmark_prompts
from vlmjax.data.benchmarks import get_benchmark
from vlmjax.data.coop_splits import index_sources, tfds_sources
from vlmjax.data.eval_sources import open_eval_source
from vlmjax.data.manual_benchmarks import Ucf101Midframes, prepare
from vlmjax.data.tfds_images import open_split, open_tfds
from vlmjax.errors import ConfigError, DataError
from vlmjax.evaluators.metrics import retrieval_metrics
from vlmjax.evaluators.retrieval import Retrieval
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


def _context(classnames: list[str]):
    config = {"data": {"dir": "", "image_mean": 0.0, "image_std": 1.0},
              "model": {"name": "two_tower", "image": {"image_size": SIZE, "channels": 3}}}
    return make_eval_context(config, graphdef=nnx.split(PixelModel(len(classnames)))[0],
                             tokenizer=ClassIdTokenizer(classnames), context_length=4,
                             mesh=make_mesh({"data": -1, "fsdp": 1, "tensor": 1}),
                             rules=(("batch", ("data", "fsdp")),))


def test_a_benchmark_source_reads_labels_without_decoding_images(prepared):
    data_dir, fgvc, _ = prepared
    source = open_eval_source("fgvc_aircraft", "train", data_dir, {"image_size": 4, "channels": 3})
    _, labels = source.rows(np.arange(source.num_rows))
    assert source.labels().tolist() == labels.tolist()  # in TFDS's (shuffled) order
    assert sorted(labels.tolist()) == sorted(label for _, label, _ in fgvc["train"])
    assert source.num_classes == 100 and source.image_captions() is None
    assert source.class_captions().names[99] == ["Yak-42"]


def test_retrieval_on_a_labelled_benchmark_with_class_captions(prepared):
    """A benchmark's class captions are its templates with its class names (one per class
    here): test image 0 (red 5, class 5) matches its caption, image 1 (red 7, class 73) none."""
    data_dir, fgvc, _ = prepared
    ctx = _context(benchmark_prompts("fgvc_aircraft")[0])
    with pytest.raises(ConfigError, match="captions_per_image=5 but fgvc_aircraft has 1 distinct"):
        Retrieval({"dataset": "fgvc_aircraft", "data_dir": data_dir}, ctx)
    for relevance in ("pair", "class"):
        evaluator = Retrieval({"dataset": "fgvc_aircraft", "data_dir": data_dir, "batch_size": 8,
                               "captions_per_image": 1, "relevance": relevance}, ctx)
        # Rows in TFDS's order: image ids are the file names.
        ids = [e["file_name"].decode() for e in (open_split("fgvc_aircraft", "test", data_dir)[i]
                                                  for i in range(2))]
        row = {f"images/{image_id}.jpg": (label, red) for image_id, label, red in fgvc["test"]}
        labels = np.array([row[i][0] for i in ids])
        red = np.array([row[i][1] for i in ids])
        scores = (red[:, None] % 100 == labels[None, :]).astype(float)  # text t: image t's class
        want = retrieval_metrics(scores, scores, labels[:, None] == labels[None, :])
        assert evaluator.run({}) == pytest.approx(want)
        assert want["text_retrieval_recall@1"] == 0.5
