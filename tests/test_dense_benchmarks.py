"""Dense benchmarks: the registry's class lists, our TFDS builders from tiny fake manual
directories in the official layouts (VOC 2012, PASCAL Context-59, ADE20K-150, COCO-Stuff-171,
COCO and LVIS boxes), the protocol's resize onto the canvas, and the errors for data that is
not prepared or does not match its class list."""

import json

import numpy as np
import pytest
from PIL import Image

from vlmjax.data.dense_benchmarks import (
    IGNORE,
    BenchmarkDenseSource,
    dense_benchmark,
    dense_benchmarks,
    dense_prompts,
    open_dense_split,
    protocol_size,
)
from vlmjax.data.dense_builders import prepare, reduce_zero_label
from vlmjax.data.dense_sources import FederatedSource, check_dense_source
from vlmjax.errors import DataError

RGB = {"image_size": 16, "channels": 3}


def _save(path, array, fmt="PNG"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path, format=fmt)


def _image(path, h, w, value):
    _save(path, np.full((h, w, 3), value, np.uint8))  # PNG bytes under a .jpg name: lossless


@pytest.mark.parametrize("name,count", [("voc2012_segmentation", 21), ("pascal_context59", 59),
                                        ("ade20k_150", 150), ("coco_stuff171", 171),
                                        ("coco_boxes", 80)])
def test_registered_class_lists_have_the_protocols_sizes(name, count):
    classnames, templates = dense_prompts(name)
    assert len(classnames) == count == len(set(classnames))
    assert templates and all("{c}" in t for t in templates)
    entry = dense_benchmark(name)
    assert "test" in entry["splits"] and entry["short_side"] <= entry["canvas"]
    assert (entry["background"] >= 0) == (name == "voc2012_segmentation")


def test_unprepared_benchmarks_name_the_command_that_prepares_them(tmp_path):
    for name in dense_benchmarks():
        with pytest.raises(DataError, match=f"{name} is not prepared .* prepare it with: .*"
                                            f"vlmjax.data.dense_builders --dataset {name}"):
            open_dense_split(name, "test", str(tmp_path))
        with pytest.raises(DataError, match="not prepared"):
            check_dense_source(name, "test", str(tmp_path), "evals.x.data_dir")
    with pytest.raises(DataError, match="has no split 'dev'"):
        open_dense_split("ade20k_150", "dev", str(tmp_path))


def test_protocol_resize():
    assert protocol_size(375, 500, 336, 672) == (336, 448, 336 / 375)
    assert protocol_size(100, 1000, 336, 672)[:2] == (67, 672)  # the long side capped


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("dense_manual")
    data_dir = str(root / "tfds")
    # VOC 2012: a 12x20 image whose mask has a person (15), background and a boundary (255).
    voc = root / "VOCdevkit" / "VOC2012"
    mask = np.zeros((12, 20), np.uint8)
    mask[2:10, 4:12] = 15
    mask[1, :] = 255
    for split, ids in (("train", ["2007_000001"]), ("val", ["2007_000002", "2007_000003"])):
        (voc / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for i in ids:
            _image(voc / "JPEGImages" / f"{i}.jpg", 12, 20, 100)
            pil = Image.fromarray(mask, mode="P")
            pil.putpalette([0, 0, 0] * 256)
            (voc / "SegmentationClass").mkdir(parents=True, exist_ok=True)
            pil.save(voc / "SegmentationClass" / f"{i}.png")
    prepare("voc2012_segmentation", str(voc), data_dir)
    # ADE20K: annotations 0 (other) and 1..150.
    ade = root / "ADEChallengeData2016"
    ade_mask = np.zeros((10, 10), np.uint8)
    ade_mask[:5] = 1
    ade_mask[5:, :5] = 150
    for split in ("training", "validation"):
        _image(ade / "images" / split / "ADE_x_1.jpg", 10, 10, 50)
        _save(ade / "annotations" / split / "ADE_x_1.png", ade_mask)
    prepare("ade20k_150", str(ade), data_dir)
    # COCO-Stuff: 0-based ids 0 (person), 11 (unused thing id 12) and 181 (wood).
    stuff = root / "cocostuff"
    stuff_mask = np.array([[0, 11], [181, 255]], np.uint8).repeat(4, 0).repeat(4, 1)
    _image(stuff / "val2017" / "000000000139.jpg", 8, 8, 10)
    _save(stuff / "stuffthingmaps_trainval2017" / "val2017" / "000000000139.png", stuff_mask)
    prepare("coco_stuff171", str(stuff), data_dir)
    # COCO boxes: one image, a dog (category 18) and a crowd of people (category 1).
    coco = root / "coco"
    _image(coco / "val2017" / "000000000785.jpg", 20, 40, 30)
    names = dense_benchmark("coco_boxes")["classnames"]
    ids = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)][:80]
    categories = [{"id": i, "name": n} for i, n in zip(ids, names, strict=True)]
    (coco / "annotations").mkdir(parents=True, exist_ok=True)
    (coco / "annotations" / "instances_val2017.json").write_text(json.dumps({
        "categories": categories[::-1], "images": [{"id": 785, "file_name": "000000000785.jpg"}],
        "annotations": [{"image_id": 785, "category_id": 18, "bbox": [2, 4, 10, 6], "iscrowd": 0},
                        {"image_id": 785, "category_id": 1, "bbox": [0, 0, 40, 20], "iscrowd": 1}]}))
    prepare("coco_boxes", str(coco), data_dir)
    return root, data_dir


def test_voc_masks_keep_classes_and_boundaries_and_resize_onto_the_canvas(prepared):
    _, data_dir = prepared
    source = BenchmarkDenseSource("voc2012_segmentation", "test", data_dir, RGB)
    assert source.num_rows == 2 and source.canvas == (672, 672) and source.background == 0
    images, masks = source.rows(np.array([1]))
    assert images.shape == (1, 672, 672, 3) and masks.shape == (1, 672, 672)
    # 12x20 -> shorter side 336 (factor 28): 336x560, at the top left of the canvas.
    assert np.all(images[0, :336, :560] == 100) and np.all(images[0, 336:] == 0)
    assert np.all(masks[0, 336:] == IGNORE) and np.all(masks[0, :, 560:] == IGNORE)
    expected = np.asarray(Image.fromarray(np.where(np.arange(12)[:, None] == 1, 255, 0).astype(
        np.uint8) + 0).resize((560, 336), Image.NEAREST))
    person = np.zeros((12, 20), np.uint8)
    person[2:10, 4:12] = 15
    person[1, :] = 255
    np.testing.assert_array_equal(masks[0, :336, :560], np.asarray(
        Image.fromarray(person).resize((560, 336), Image.NEAREST)))
    assert expected.shape == (336, 560)
    assert source.classnames[15] == "person"


def test_ade_and_coco_stuff_labels_are_mapped_to_the_class_lists(prepared):
    _, data_dir = prepared
    ade = BenchmarkDenseSource("ade20k_150", "test", data_dir, RGB)
    _, masks = ade.rows(np.array([0]))
    assert set(np.unique(masks[0, :336, :336]).tolist()) == {IGNORE, 0, 149}  # other ignored
    assert ade.classnames[0] == "wall" and ade.classnames[149] == "flag" and ade.background == -1
    stuff = BenchmarkDenseSource("coco_stuff171", "test", data_dir, RGB)
    _, masks = stuff.rows(np.array([0]))
    region = masks[0, :448, :448]
    # person -> 0, the unused thing id -> ignored, wood (the last stuff id) -> 170
    assert region[0, 0] == 0 and region[0, -1] == IGNORE and region[-1, 0] == 170
    assert stuff.classnames[170] == "wood" and stuff.classnames[0] == "person"


def test_coco_boxes_drop_crowds_and_scale_to_the_canvas(prepared):
    _, data_dir = prepared
    source = BenchmarkDenseSource("coco_boxes", "test", data_dir, RGB)
    [(boxes, labels)] = source.boxes(np.array([0]))
    factor = 448 / 20
    np.testing.assert_allclose(boxes, [[2 * factor, 4 * factor, 12 * factor, 10 * factor]])
    assert source.classnames[labels[0]] == "dog"
    assert not source.has_masks and source.has_boxes


def test_builders_and_sources_refuse_masks_that_do_not_fit(prepared, tmp_path):
    root, _ = prepared
    ade = tmp_path / "ADEChallengeData2016"
    for split in ("training", "validation"):
        _image(ade / "images" / split / "a.jpg", 10, 10, 5)
        _save(ade / "annotations" / split / "a.png", np.zeros((9, 10), np.uint8))
    with pytest.raises(DataError, match="is 10x9 but its image .* is 10x10"):
        prepare("ade20k_150", str(ade), str(tmp_path / "tfds"))
    for split in ("training", "validation"):
        _save(ade / "annotations" / split / "a.png", np.full((10, 10), 151, np.uint8))
    with pytest.raises(DataError, match="class id 150 outside the 150 classes"):
        prepare("ade20k_150", str(ade), str(tmp_path / "tfds2"))
    short = tmp_path / "short.json"
    short.write_text(json.dumps({"voc2012_segmentation": ["background", "cat"]}))
    with pytest.raises(DataError, match="2 class names for voc2012_segmentation, whose labels "
                                        "have 21 classes"):
        dense_prompts("voc2012_segmentation", classnames_file=str(short))
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"voc2012_segmentation": []}))
    with pytest.raises(DataError, match="class list of voc2012_segmentation is empty"):
        dense_prompts("voc2012_segmentation", classnames_file=str(empty))


def test_reduce_zero_label():
    np.testing.assert_array_equal(reduce_zero_label(np.array([0, 1, 59])), [IGNORE, 0, 58])


def test_dense_evaluators_read_prepared_benchmarks_end_to_end(prepared):
    """The planted model of test_dense_eval on VOC (sliding windows over a small canvas) and
    on COCO's boxes: the plumbing runs and what the planted model cannot say scores 0."""
    from flax import nnx

    from tests.eval_contexts import make_eval_context
    from tests.test_dense_eval import PlantedDense
    from tests.test_zeroshot import ClassIdTokenizer
    from vlmjax.evaluators.dense_segmentation import DenseSegmentation
    from vlmjax.evaluators.region_classification import RegionClassification
    from vlmjax.parallel.mesh import make_mesh

    _, data_dir = prepared
    mesh = make_mesh({"data": -1, "fsdp": 1, "tensor": 1})

    def context(classnames):
        config = {"data": {"dir": "", "image_mean": 0.0, "image_std": 1.0},
                  "model": {"name": "two_tower", "image": {"image_size": 16, "channels": 3}}}
        return make_eval_context(config, graphdef=nnx.split(PlantedDense())[0],
                                 tokenizer=ClassIdTokenizer(classnames), context_length=4,
                                 mesh=mesh, rules=(("batch", ("data", "fsdp")),))

    voc = dense_prompts("voc2012_segmentation")[0]
    metrics = DenseSegmentation({"dataset": "voc2012_segmentation", "data_dir": data_dir,
                                 "batch_size": 8, "background": "threshold", "short_side": 16,
                                 "canvas": 32, "stride": 8}, context(voc[1:])).run({})
    assert 0 <= metrics["tokens/miou"] <= 1 and 0 <= metrics["tokens/miou_fg"] <= 1
    assert metrics.get("tokens/iou/person", 0.0) == 0.0  # it never names a person
    coco = dense_prompts("coco_boxes")[0]
    regions = RegionClassification({"dataset": "coco_boxes", "data_dir": data_dir,
                                    "batch_size": 8, "methods": ("crop", "tokens"),
                                    "short_side": 16, "canvas": 32}, context(coco)).run({})
    assert set(regions) == {"crop/acc1", "crop/mean_per_class_recall", "tokens/acc1",
                            "tokens/mean_per_class_recall"}


def _lvis(root, images, annotations, categories=None):
    """A mock LVIS manual directory: 10x10 images under train2017/ (id -> extra fields of its
    entry) and, by default, 1203 categories with frequencies r, c, f, r, c, f..."""
    for image_id in images:
        _image(root / "train2017" / f"{image_id:012d}.jpg", 10, 10, 7)
    if categories is None:
        categories = [{"id": i + 1, "name": f"thing_{i}", "frequency": "rcf"[i % 3]}
                      for i in range(1203)]
    entries = [{"id": i, "coco_url": f"http://x/train2017/{i:012d}.jpg", **extra}
               for i, extra in images.items()]
    (root / "lvis_v1_val.json").write_text(json.dumps({
        "categories": categories, "images": entries, "annotations": annotations}))


def test_lvis_names_its_classes_from_the_annotation_file(tmp_path):
    root = tmp_path / "lvis"
    _lvis(root, {9: {"neg_category_ids": [7, 3], "not_exhaustive_category_ids": [1203]},
                 12: {"neg_category_ids": [], "not_exhaustive_category_ids": []}},
          [{"image_id": 9, "category_id": 1203, "bbox": [1, 1, 3, 3]}])
    data_dir = str(tmp_path / "tfds")
    prepare("lvis_boxes", str(root), data_dir)
    source = FederatedSource("lvis_boxes", "test", data_dir, RGB)
    assert len(source.classnames) == 1203 and source.classnames[5] == "thing 5"
    # TFDS shuffles the rows: image 9 is the one with a box.
    rows = sorted(range(2), key=lambda r: -len(source.boxes(np.array([r]))[0][1]))
    [(_, labels), (_, none)] = source.boxes(np.array(rows))
    assert source.classnames[labels[0]] == "thing 1202" and len(none) == 0
    # LVIS's federated fields, as label indices (category id - 1) and frequencies by label.
    (neg, not_exhaustive), (neg12, not_exhaustive12) = source.federated(np.array(rows))
    np.testing.assert_array_equal(neg, [2, 6])
    np.testing.assert_array_equal(not_exhaustive, [1202])
    assert len(neg12) == len(not_exhaustive12) == 0
    assert source.frequencies[:4] == ["r", "c", "f", "r"] and len(source.frequencies) == 1203
    # COCO has no federation; an annotation file that names an unknown category fails.
    bad = tmp_path / "bad"
    _lvis(bad, {9: {"neg_category_ids": [5000]}}, [])
    with pytest.raises(DataError, match=r"image 9 lists neg_category_ids \[5000\]"):
        prepare("lvis_boxes", str(bad), str(tmp_path / "tfds_bad"))


def test_coco_boxes_have_no_federation(prepared):
    _, data_dir = prepared
    source = FederatedSource("coco_boxes", "test", data_dir, RGB)
    assert source.frequencies is None and source.federated(np.array([0])) is None


def test_an_older_lvis_file_builds_without_federated_fields(tmp_path, caplog, monkeypatch):
    """No neg / not-exhaustive lists and no frequencies (LVIS before v0.5): empty lists and
    unknown ("") frequencies, each with a warning."""
    root = tmp_path / "lvis_old"
    _lvis(root, {9: {}}, [{"image_id": 9, "category_id": 2, "bbox": [1, 1, 3, 3]}],
          [{"id": i + 1, "name": f"thing_{i}"} for i in range(1203)])
    data_dir = str(tmp_path / "tfds")
    with caplog.at_level("WARNING"):
        prepare("lvis_boxes", str(root), data_dir)
    assert "1203 of 1203 categories have no frequency" in caplog.text
    assert "no neg_category_ids" in caplog.text and "no not_exhaustive_category_ids" in caplog.text
    source = FederatedSource("lvis_boxes", "test", data_dir, RGB)
    assert source.frequencies == [""] * 1203
    [(neg, not_exhaustive)] = source.federated(np.array([0]))
    assert len(neg) == len(not_exhaustive) == 0
    # A preparation from before these fields (faked: fields it lacks) fails naming the fix.
    monkeypatch.setattr("vlmjax.data.dense_sources.FEDERATED_FIELDS", ("neg_labels", "absent"))
    with pytest.raises(DataError, match="prepared without LVIS's negative .* remove that folder"):
        _ = FederatedSource("lvis_boxes", "test", data_dir, RGB).frequencies  # checked per source


def test_a_source_refuses_a_mask_that_does_not_match_its_image(prepared):
    _, data_dir = prepared
    source = BenchmarkDenseSource("voc2012_segmentation", "test", data_dir, RGB)
    buffer = __import__("io").BytesIO()
    Image.fromarray(np.full((5, 5), 40, np.uint8)).save(buffer, format="PNG")
    with pytest.raises(DataError, match="row 0: mask of size 5x5 for an image of size 20x12"):
        source._mask(0, {"mask": buffer.getvalue()}, (12, 20), 1.0)
    buffer = __import__("io").BytesIO()
    Image.fromarray(np.full((12, 20), 40, np.uint8)).save(buffer, format="PNG")
    with pytest.raises(DataError, match="mask holds class id 40, but the class list has 21"):
        source._mask(0, {"mask": buffer.getvalue()}, (12, 20), 1.0)
