"""Web-scale image-text data: tar and prepared shards, bad samples, crops, resume, mixtures, prepare."""

import io
import json
import os
import shutil
import tarfile

import numpy as np
import pytest
from PIL import Image

from vlmjax.data.idx import read_idx
from vlmjax.data.image_text_pipeline import ImageTextIterator, image_text_dataset, skip_metrics
from vlmjax.data.image_text_sources import (
    SourceSpec,
    check_missing_shards,
    prepared_source,
    tar_source,
)
from vlmjax.data.image_text_transform import (
    SHARD_COUNTS,
    SKIP_REASONS,
    ImageTextTransform,
    random_resized_crop_box,
    resize_centre_crop,
)
from vlmjax.data.prepare import main as prepare_main
from vlmjax.data.webdataset_tar import expand_shards, iter_tar_samples
from vlmjax.errors import ConfigError, DataError
from vlmjax.tokenizers.trained_bpe import train_bpe

SHARDS, PER_SHARD, BATCH = 4, 100, 20
# Sample i of a shard is bad when i % 20 < 7: 5% of each of these kinds (prepare and the loader
# count them under these names).
BAD_KINDS = ("truncated_image", "undecodable_image", "absurd_size", "empty_caption",
             "caption_not_utf8", "missing_image", "missing_caption")
GOOD_VARIANTS = ("jpeg", "png", "webp", "gray_png", "cmyk_jpeg", "palette_png", "rgba_png",
                 "rgba_webp")


def encode(rgb: np.ndarray, variant: str) -> bytes:
    """`rgb` (uint8 [H, W, 3]) encoded as the named format and mode."""
    pil = Image.fromarray(rgb)
    fmt, mode = {"jpeg": ("JPEG", "RGB"), "png": ("PNG", "RGB"), "webp": ("WEBP", "RGB"),
                 "gray_png": ("PNG", "L"), "cmyk_jpeg": ("JPEG", "CMYK"),
                 "palette_png": ("PNG", "P"), "rgba_png": ("PNG", "RGBA"),
                 "rgba_webp": ("WEBP", "RGBA")}[variant]
    pil = pil.quantize(64) if mode == "P" else pil.convert(mode)
    out = io.BytesIO()
    pil.save(out, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    return out.getvalue()


def fashion_rgb(images: np.ndarray, i: int) -> np.ndarray:
    """A 56 x 42 RGB picture from a 28 x 28 Fashion-MNIST-like image (upscaled, tinted)."""
    g = np.kron(images[i % len(images)], np.ones((2, 2), np.uint8))[:, 7:49]
    tint = np.array([1.0, 0.5 + (i % 3) / 4, 0.3 + (i % 5) / 8])
    return (g[..., None] * tint).astype(np.uint8)


def sample_fields(images: np.ndarray, i: int, prefix: str) -> dict[str, bytes]:
    """The tar members of sample i (planted bad kinds included)."""
    variant = GOOD_VARIANTS[i % len(GOOD_VARIANTS)]
    image = encode(fashion_rgb(images, i), variant)
    fields = {"jpg" if "jpeg" in variant else variant.split("_")[-1]: image,
              "txt": f"{prefix} picture number {i}".encode()}
    bad = BAD_KINDS[i % 20] if i % 20 < len(BAD_KINDS) else None
    if bad == "truncated_image":
        jpeg = encode(fashion_rgb(images, i), "jpeg")
        fields = {"jpg": jpeg[:len(jpeg) * 2 // 3], "txt": fields["txt"]}  # cut in the scan
    elif bad == "undecodable_image":
        fields = {"jpg": np.random.default_rng(i).bytes(500), "txt": fields["txt"]}
    elif bad == "absurd_size":
        fields = {"png": encode(np.zeros((4, 60, 3), np.uint8), "png"), "txt": fields["txt"]}
    elif bad == "empty_caption":
        fields["txt"] = b"  \n"
    elif bad == "caption_not_utf8":
        fields["txt"] = b"caf\xe9 \xff\xfe"
    elif bad == "missing_image":
        fields = {"txt": fields["txt"]}
    elif bad == "missing_caption":
        fields = {"png": encode(fashion_rgb(images, i), "png")}
    return {**fields, "json": json.dumps({"index": i}).encode()}


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def write_tars(directory: str, images: np.ndarray, prefix: str, shards: int = SHARDS) -> str:
    os.makedirs(directory, exist_ok=True)
    for s in range(shards):
        with tarfile.open(os.path.join(directory, f"{s:05d}.tar"), "w") as tar:
            for i in range(s * PER_SHARD, (s + 1) * PER_SHARD):
                for ext, data in sample_fields(images, i, prefix).items():
                    info = tarfile.TarInfo(f"{i:06d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return directory


@pytest.fixture(scope="module")
def fashion_images(synthetic_data_dir) -> np.ndarray:
    return read_idx(os.path.join(synthetic_data_dir, "train-images-idx3-ubyte.gz"))


@pytest.fixture(scope="module")
def tars(tmp_path_factory, fashion_images) -> str:
    return write_tars(str(tmp_path_factory.mktemp("tars")), fashion_images, "alpha")


@pytest.fixture(scope="module")
def tokenizer():
    texts = [f"{p} picture number {i}" for p in ("alpha", "beta") for i in range(SHARDS * PER_SHARD)]
    return train_bpe(texts, 600)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tars) -> tuple[str, dict]:
    """Tars prepared with header checks only, so truncated JPEGs reach the loader."""
    out = str(tmp_path_factory.mktemp("prepared"))
    assert prepare_main(["--tar", tars, "--output_dir", out, "--num_workers", "1",
                         "--no-decode_check"]) == 0
    with open(os.path.join(out, "prepare_report.json")) as f:
        return out, json.load(f)


def loader(sources, tokenizer, **kw) -> ImageTextIterator:
    kw.setdefault("seed", 0)
    return ImageTextIterator(image_text_dataset(
        sources, ImageTextTransform(16, seed=kw.pop("transform_seed", 1)), tokenizer, 12, BATCH,
        **kw))


def good_indices() -> list[int]:
    return [i for i in range(SHARDS * PER_SHARD) if i % 20 >= len(BAD_KINDS)]


def test_streamed_tars_skip_every_bad_kind_and_keep_batches_full(tars, tokenizer):
    it = loader([SourceSpec("tar", tars)], tokenizer)
    batches = [next(it) for _ in range(len(good_indices()) // BATCH)]  # exactly one epoch
    assert all(b["image"].shape == (BATCH, 16, 16, 3) and b["text"].shape == (BATCH, 12)
               for b in batches)
    per_kind = SHARDS * PER_SHARD // 20
    assert it.skipped == {r: per_kind if r in BAD_KINDS else 0 for r in SKIP_REASONS}
    captions = {tokenizer.decode(ids[m]).replace(" ", "") for b in batches
                for ids, m in zip(b["text"], b["text_mask"], strict=True)}
    assert captions == {f"alphapicturenumber{i}" for i in good_indices()}
    it.close()


def test_decoding_matches_pil_and_the_source_pixels(fashion_images):
    transform = ImageTextTransform(16)
    rgb = fashion_rgb(fashion_images, 3)
    for variant in GOOD_VARIANTS:
        data = encode(rgb, variant)
        ours = np.asarray(transform.decode(data))
        with Image.open(io.BytesIO(data)) as pil:
            assert np.array_equal(ours, np.asarray(pil.convert("RGB"))), variant
        error = np.abs(ours.astype(int) - rgb).mean()
        if variant in ("png", "webp", "rgba_png", "rgba_webp"):  # lossless: the pixels exactly
            assert error == 0, variant
        elif variant == "gray_png":  # ITU-R 601 luma in every channel
            luma = Image.fromarray(rgb).convert("L")
            assert np.array_equal(ours, np.repeat(np.asarray(luma)[..., None], 3, -1))
        else:
            assert error < 8, (variant, error)
    one = ImageTextTransform(16, channels=1).decode(encode(rgb, "png"))
    assert one.mode == "L"


def test_random_resized_crop_box_hand_checked_cases():
    rng = np.random.default_rng(0)
    assert random_resized_crop_box(rng, 30, 30, (1, 1), (1, 1)) == (0, 0, 30, 30)
    # 40 x 20 at full area cannot fit a ratio in [3/4, 4/3]: torchvision's fallback crops the
    # centre at ratio 4/3: w = round(20 * 4/3) = 27, left = (40 - 27) // 2 = 6.
    assert random_resized_crop_box(rng, 40, 20, (1, 1), (3 / 4, 4 / 3)) == (6, 0, 27, 20)
    assert random_resized_crop_box(rng, 10, 40, (1, 1), (3 / 4, 4 / 3)) == (0, 13, 10, 13)
    for _ in range(500):
        left, top, w, h = random_resized_crop_box(rng, 100, 80, (0.08, 1.0), (3 / 4, 4 / 3))
        assert left >= 0 and left + w <= 100 and top >= 0 and top + h <= 80
        assert 0.08 * 8000 - 200 <= w * h <= 8000 and 3 / 4 - 0.05 <= w / h <= 4 / 3 + 0.05


def test_random_resized_crop_is_a_window_and_centre_crop_matches_pil():
    image = np.random.default_rng(1).integers(0, 256, (12, 12, 3), np.uint8)
    data = encode(image, "png")
    # area 36 at ratio 1: a 6 x 6 window, resized to 6 x 6 (identity): some window of the image.
    transform = ImageTextTransform(6, scale=(0.25, 0.25), ratio=(1, 1), min_size=1)
    seen = set()
    for position in range(20):
        out = transform({"image": data, "captions": [b"x"], "__position__": [position]})["image"]
        windows = [(t, c) for t in range(7) for c in range(7)
                   if np.array_equal(out, image[t:t + 6, c:c + 6])]
        assert len(windows) == 1
        seen.add(windows[0])
    assert len(seen) > 5  # the offsets vary with the position
    # Centre crop: bicubic resize of the shorter side (40 x 20 -> 20 x 10), the middle 10 x 10.
    wide = np.random.default_rng(2).integers(0, 256, (20, 40, 3), np.uint8)
    centre = ImageTextTransform(10, crop="center", min_size=1)(
        {"image": encode(wide, "png"), "captions": [b"x"], "__position__": [0]})["image"]
    expected = Image.fromarray(wide).resize((20, 10), Image.BICUBIC).crop((5, 0, 15, 10))
    assert np.array_equal(centre, np.asarray(expected))
    assert np.array_equal(np.asarray(resize_centre_crop(Image.fromarray(wide), 10)), centre)


def test_prepared_shards_resume_exactly_with_worker_processes(prepared, tokenizer):
    import absl.flags
    absl.flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags
    directory, _ = prepared
    first = loader([SourceSpec("prepared", directory)], tokenizer, num_workers=1)
    for _ in range(3):
        next(first)
    state = json.loads(json.dumps(first.get_state()))  # as a checkpoint stores it
    expected = [next(first) for _ in range(4)]
    first.close()
    again = loader([SourceSpec("prepared", directory)], tokenizer, num_workers=1)
    again.set_state(state)
    for want in expected:
        got = next(again)
        assert all(np.array_equal(got[k], want[k]) for k in want)
    again.close()


def test_prepared_shards_global_shuffle_skips_truncated(prepared, tokenizer):
    directory, report = prepared
    # Prepare (header checks only) dropped all but the truncated JPEGs; the loader catches those.
    assert report["records"] == SHARDS * PER_SHARD * 14 // 20
    assert report["skipped"]["truncated_image"] == 0
    it = loader([SourceSpec("prepared", directory)], tokenizer)
    batches = [next(it) for _ in range(len(good_indices()) // BATCH)]  # one epoch
    # Skips are counted with the next kept sample: those after the epoch's last good one are not
    # counted yet. Which those are follows from the shuffled order of the records' keys.
    order = [int(s["__key__"]) for s in prepared_source(directory, seed=0)[:report["records"]]]
    last_good = max(p for p, i in enumerate(order) if i % 20 != 0)
    assert it.skipped["truncated_image"] == sum(i % 20 == 0 for i in order[:last_good])
    assert sum(i % 20 == 0 for i in order) == SHARDS * PER_SHARD // 20
    numbers = [int(tokenizer.decode(ids[m]).replace(" ", "")[18:]) for b in batches
               for ids, m in zip(b["text"], b["text_mask"], strict=True)]
    assert sorted(numbers) == good_indices()
    assert numbers != sorted(numbers)  # shuffled across shards, not read in order
    it.close()


def test_streamed_tars_resume_at_shard_and_offset(tars, tokenizer):
    first = loader([SourceSpec("tar", tars)], tokenizer)
    for _ in range(5):
        next(first)
    state = first.get_state()
    offsets = [s["offset"] for s in state["pipeline"]["iterators_in_use_states"]]
    assert sum(offsets) == 5 * BATCH + sum(state["skipped"].values())  # every sample read once
    expected = [next(first) for _ in range(3)]
    again = loader([SourceSpec("tar", tars)], tokenizer)
    again.set_state(json.loads(json.dumps(state)))
    for want in expected:
        got = next(again)
        assert all(np.array_equal(got[k], want[k]) for k in want)
    assert again.skipped == first.skipped


def test_mixture_proportions_follow_weights(tmp_path, tars, fashion_images, tokenizer):
    beta = write_tars(str(tmp_path / "beta"), fashion_images, "beta", shards=2)
    it = loader([SourceSpec("tar", tars), SourceSpec("tar", beta)], tokenizer, weights=(3, 1))
    words = [tokenizer.decode(ids[m]).split()[0] for _ in range(30)
             for b in [next(it)] for ids, m in zip(b["text"], b["text_mask"], strict=True)]
    # grain mixes by exact integer proportions (no sampling noise): after n samples each source
    # is within a couple of samples of its share.
    n = len(words)
    assert abs(words.count("alpha") - 0.75 * n) <= 2 and abs(words.count("beta") - 0.25 * n) <= 2


def test_per_host_shards_are_disjoint_and_complete(prepared, tars):
    directory, report = prepared
    n = report["records"]
    hosts = [prepared_source(directory, seed=3, process_index=p, process_count=2) for p in range(2)]
    keys = [[hosts[p][i]["__key__"] for i in range(n // 2)] for p in range(2)]
    assert not set(keys[0]) & set(keys[1])
    assert len(set(keys[0]) | set(keys[1])) == n
    tar_hosts = [tar_source(tars, seed=3, process_index=p, process_count=2, cycle_length=1)
                 for p in range(2)]
    seen = []
    for ds in tar_hosts:
        it = iter(ds)
        seen.append({next(it)["__key__"] for _ in range(2 * PER_SHARD)})  # its 2 of 4 shards
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == SHARDS * PER_SHARD


def test_prepare_resumes_without_redoing_finished_shards(tmp_path, tars):
    out = str(tmp_path / "out")
    args = ["--tar", tars, "--output_dir", out, "--num_workers", "1"]
    assert prepare_main(args) == 0
    shards = sorted(f for f in os.listdir(out) if f.endswith(".array_record"))
    first = {f: read_bytes(os.path.join(out, f)) for f in shards}
    with open(os.path.join(out, "prepare_report.json")) as f:
        report = json.load(f)
    per_kind = SHARDS * PER_SHARD // 20
    assert report["skipped"] == {r: per_kind if r in BAD_KINDS else 0 for r in SKIP_REASONS}
    assert report["records"] == SHARDS * PER_SHARD * 13 // 20
    # An interrupted run: shard 2 never finished (no done marker, a partial file left behind).
    os.remove(os.path.join(out, shards[2] + ".done.json"))
    os.remove(os.path.join(out, shards[2]))
    with open(os.path.join(out, shards[2] + ".partial"), "wb") as f:
        f.write(b"half")
    mtimes = {f: os.stat(os.path.join(out, f)).st_mtime_ns for f in shards if f != shards[2]}
    assert prepare_main(args) == 0
    with open(os.path.join(out, "prepare_report.json")) as f:
        again = json.load(f)
    assert again["written_now"] == 1 and again["skipped"] == report["skipped"]
    assert {f: os.stat(os.path.join(out, f)).st_mtime_ns for f in mtimes} == mtimes
    assert {f: read_bytes(os.path.join(out, f)) for f in shards} == first
    assert prepare_main(["--tar", tars, "--output_dir", out, "--shard_size", "7",
                         "--name", "other"]) == 2  # another preparation into the same dir


def test_prepare_from_csv_and_jsonl(tmp_path, fashion_images, tokenizer):
    rows = []
    for i in range(30):
        name = f"img/{i}.{('png', 'jpg', 'webp')[i % 3]}"
        os.makedirs(tmp_path / "img", exist_ok=True)
        variant = ("png", "jpeg", "webp")[i % 3]
        (tmp_path / name).write_bytes(encode(fashion_rgb(fashion_images, i), variant))
        rows.append((name if i != 5 else "img/missing.png", f"alpha picture number {i}" if i != 7 else ""))
    with open(tmp_path / "pairs.csv", "w") as f:
        f.write("filepath\ttitle\n" + "".join(f"{a}\t{b}\n" for a, b in rows))
    with open(tmp_path / "pairs.jsonl", "w") as f:
        f.write("".join(json.dumps({"image": a, "caption": b}) + "\n" for a, b in rows))
    for flag, extra in (("--csv", ["--image_column", "filepath", "--caption_column", "title"]),
                        ("--jsonl", [])):
        out = str(tmp_path / flag.strip("-"))
        assert prepare_main([flag, str(tmp_path / f"pairs{flag.replace('--', '.')}"),
                             "--output_dir", out, "--shard_size", "8", "--num_workers", "1",
                             *extra]) == 0
        with open(os.path.join(out, "prepare_report.json")) as f:
            report = json.load(f)
        assert report["shards"] == 4 and report["records"] == 28
        assert report["skipped"]["missing_image"] == 1 and report["skipped"]["empty_caption"] == 1
        ds = prepared_source(out, seed=0)
        assert sorted(int(ds[i]["__key__"]) for i in range(28)) == [
            i for i in range(30) if i not in (5, 7)]


def test_train_from_prepared_shards_logs_skips(tmp_path, prepared, tokenizer):
    from vlmjax.config import load_config_file, select, validate
    from vlmjax.errors import ConfigError
    from vlmjax.train.loop import train
    from vlmjax.train.metrics_writer import read_metrics

    tokenizer.save(str(tmp_path / "tok"))
    config = load_config_file(os.path.join(os.path.dirname(__file__), "..", "configs", "test",
                                           "tiny_clip.py"))
    select(config, "data.name", "image_text")
    config.data.web.sources = (f"prepared:{prepared[0]}",)
    config.data.web.num_workers = 0
    config.data.image_mean = config.data.image_std = 0.5
    config.tokenizer.kind, config.tokenizer.path = "hf_json", str(tmp_path / "tok" / "tokenizer.json")
    config.model.image.update(image_size=16, channels=3, patch_size=8)
    config.train.update(batch_size=16, num_steps=4, log_every=2, checkpoint_every=4)
    config.evals = type(config.evals)()
    bad = config.copy_and_resolve_references()
    bad.data.web.weights = (1.0, 2.0)
    with pytest.raises(ConfigError, match="data.web.weights"):
        validate(bad, 8)
    train(config, str(tmp_path / "run"))
    rows = read_metrics(str(tmp_path / "run" / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [2, 4] and all(np.isfinite(r["loss"]) for r in rows)
    # 4 steps x 16 samples in the shuffled stream: about 1 truncated record per 13 good ones
    assert 0 < rows[-1]["data/skipped_truncated_image"] == rows[-1]["data/skipped"] < 16


# Damaged and missing shards. A tar of the `tars` fixture holds samples i = 100 s .. 100 s + 99;
# sample i is a planted bad one when i % 20 < 7, so its first n samples hold
# good(n) = sum(i % 20 >= 7 for i < n) usable ones.


def good(n: int) -> int:
    return sum(i % 20 >= len(BAD_KINDS) for i in range(n))


def cut_tar(source: str, target: str, sample: int, where: str) -> None:
    """`source` cut at its local sample `sample`: "boundary" ends the file right before that
    sample's first member (a killed writer), "mid" inside that member's data (a cut copy)."""
    with tarfile.open(source) as tar:
        members = tar.getmembers()
    key = f"{int(os.path.basename(source)[:5]) * PER_SHARD + sample:06d}"
    first = next(m for m in members if m.name.startswith(key + "."))
    size = first.offset if where == "boundary" else first.offset_data + first.size // 2
    with open(source, "rb") as f, open(target, "wb") as out:
        out.write(f.read(size))


def write_stats(tar_path: str, successes: int) -> None:
    """img2dataset's per-shard statistics file: `successes` is the samples written to the tar."""
    with open(tar_path[:-len(".tar")] + "_stats.json", "w") as f:
        json.dump({"count": successes + 3, "successes": successes, "failed_to_download": 3}, f)


def one_shard(tmp_path, tars, name: str, sample: int | None = None, where: str = "",
              stats: bool = False) -> str:
    """A directory holding shard 00001 of `tars`, cut at `sample` when given."""
    directory = tmp_path / name
    directory.mkdir()
    target = str(directory / "00001.tar")
    if sample is None:
        shutil.copy(os.path.join(tars, "00001.tar"), target)
    else:
        cut_tar(os.path.join(tars, "00001.tar"), target, sample, where)
    if stats:
        write_stats(target, PER_SHARD)
    return str(directory)


def test_tar_reader_reports_every_kind_of_cut(tmp_path, tars):
    cases = {  # name: (file bytes of shard 00001, complete samples, sample in progress dropped)
        "intact": (None, PER_SHARD, 0)}
    data = read_bytes(os.path.join(tars, "00001.tar"))
    with tarfile.open(os.path.join(tars, "00001.tar")) as tar:
        members = tar.getmembers()
    last = members[-1].offset_data + -(-members[-1].size // 512) * 512  # end of the last member
    header_40 = next(m for m in members if m.name.startswith("000140.")).offset
    cases.update({
        "no end-of-archive marker": (data[:last], PER_SHARD - 1, 1),  # writer killed at close
        "half an end-of-archive marker": (data[:last + 512], PER_SHARD, 0),
        "cut at a member boundary": (data[:header_40], 40 - 1, 1),
        "cut in a header": (data[:header_40 + 100], 40 - 1, 1),
        "a garbage header": (data[:header_40] + b"x" * 512 + data[header_40 + 512:], 40 - 1, 1),
        "cut in a member": (data[:header_40 + 700], 40, 1)})
    for name, (content, read, dropped) in cases.items():
        path = os.path.join(tars, "00001.tar") if content is None else str(tmp_path / "t.tar")
        if content is not None:
            with open(path, "wb") as f:
                f.write(content)
        items = list(iter_tar_samples(path))
        samples = [x for x in items if "__error__" not in x]
        assert [x["__key__"] for x in samples] == [f"{PER_SHARD + i:06d}" for i in range(read)], name
        markers = items[len(samples):]
        if name == "intact":
            assert not markers
            continue
        assert len(markers) == 1 and markers[0]["__read__"] == read, name
        assert markers[0]["__dropped__"] == dropped and not markers[0]["__missing__"], name
        # A reader resumed after the marker does not count the damage twice.
        assert list(iter_tar_samples(path, skip=len(items))) == [], name
    missing = list(iter_tar_samples(str(tmp_path / "absent.tar")))
    assert len(missing) == 1 and missing[0]["__missing__"] and missing[0]["__read__"] == 0


def single_shard_loader(directory: str, tokenizer, batch: int, **kw) -> ImageTextIterator:
    """One epoch's usable samples per batch: a single shard read in order (cycle_length 1)."""
    return ImageTextIterator(image_text_dataset(
        [SourceSpec("tar", directory)], ImageTextTransform(16), tokenizer, 12, batch, seed=0,
        cycle_length=1, **kw))


@pytest.mark.parametrize("where, stats", [("mid", True), ("boundary", False)])
def test_cut_tars_count_the_samples_they_lost(tmp_path, tars, tokenizer, where, stats):
    # Cut inside sample 35 with img2dataset's stats beside it (100 samples): 35 complete ones
    # are read, the other 65 lost; cut before sample 41's first member without stats: 40 are
    # read and sample 40, maybe incomplete, is dropped: 1 known lost, the rest unknown.
    sample = 35 if where == "mid" else 41
    read = sample if where == "mid" else sample - 1
    lost, unknown = (PER_SHARD - read, 0) if stats else (1, 1)
    it = single_shard_loader(one_shard(tmp_path, tars, "cut", sample, where, stats), tokenizer,
                             good(read))
    planted = read - good(read)
    for epochs in (1, 2, 3):
        batch = next(it)  # one epoch's usable samples
        assert batch["image"].shape[0] == good(read)
        # A shard's end marker comes after its last usable sample, so it is counted with the
        # next epoch's first one: after n batches, n epochs of planted skips and n - 1 markers.
        assert sum(it.skipped[r] for r in BAD_KINDS) == planted * epochs
        assert it.skipped["damaged_tar"] == lost * (epochs - 1)
    assert it.shards == {"damaged_shards": 2, "missing_shards": 0, "unknown_loss_shards": 2 * unknown}
    # Every sample of the input accounted for: used, skipped by reason, or lost to the damage.
    if stats:
        assert good(read) + planted + lost == PER_SHARD
    metrics = skip_metrics(it.get_state())
    assert metrics["data/damaged_shards"] == 2 and metrics["data/skipped_damaged_tar"] == 2 * lost
    assert metrics["data/skipped"] == sum(it.skipped.values())  # samples only, not shards
    it.close()


def test_missing_shards_are_an_error_or_counted(tmp_path, tars, tokenizer):
    directory = tmp_path / "gap"
    directory.mkdir()
    for s in (0, 1, 3):  # shard 2 is missing
        shutil.copy(os.path.join(tars, f"{s:05d}.tar"), directory)
    pattern = str(directory / "{00000..00003}.tar")
    with pytest.raises(DataError, match=r"1 of the 4 tar shards .* are missing \(00002.tar\).*"
                                        r"missing_shards=count"):
        expand_shards(pattern)
    with pytest.raises(DataError, match="missing"):
        SourceSpec("tar", pattern).check()
    with pytest.raises(DataError, match="missing"):
        loader([SourceSpec("tar", pattern)], tokenizer)
    SourceSpec("tar", pattern).check("count")
    check_missing_shards("count")
    with pytest.raises(ConfigError, match="data.web.missing_shards"):
        check_missing_shards("skip")
    assert expand_shards(pattern, "count") == [str(directory / f"{s:05d}.tar") for s in range(4)]
    for stats in (False, True):
        if stats:
            write_stats(str(directory / "00002.tar"), PER_SHARD)
        it = loader([SourceSpec("tar", pattern)], tokenizer, missing_shards="count")
        for _ in range(2 * 3 * good(PER_SHARD) // BATCH):  # two epochs of the 3 shards
            next(it)
        # each read of the missing shard is counted; with img2dataset's stats, its samples too
        n = it.shards["missing_shards"]
        assert n >= 1 and it.shards["damaged_shards"] == 0
        assert it.skipped["missing_tar"] == (PER_SHARD * n if stats else 0)
        assert it.shards["unknown_loss_shards"] == (0 if stats else n)
        assert skip_metrics(it.get_state())["data/missing_shards"] == n
        it.close()


def test_prepare_report_accounts_for_every_input_sample(tmp_path, tars, capsys):
    directory = tmp_path / "damaged"
    directory.mkdir()
    shutil.copy(os.path.join(tars, "00000.tar"), directory)
    write_stats(str(directory / "00000.tar"), PER_SHARD)
    cut_tar(os.path.join(tars, "00001.tar"), str(directory / "00001.tar"), 35, "mid")
    write_stats(str(directory / "00001.tar"), PER_SHARD)
    cut_tar(os.path.join(tars, "00002.tar"), str(directory / "00002.tar"), 41, "boundary")
    write_stats(str(directory / "00003.tar"), PER_SHARD)  # the tar itself is missing
    out = str(tmp_path / "out")
    args = ["--tar", str(directory / "{00000..00003}.tar"), "--output_dir", out,
            "--num_workers", "1"]
    assert prepare_main(args) == 2
    assert "00003.tar" in capsys.readouterr().err
    assert prepare_main([*args, "--missing_shards", "count"]) == 0
    err = capsys.readouterr().err
    assert "2 damaged and 1 missing tar shards" in err and "1 whose sample count is unknown" in err
    with open(os.path.join(out, "prepare_report.json")) as f:
        report = json.load(f)
    # shard 0: intact; 1: cut in sample 35 (65 lost); 2: cut before sample 41, no stats (40
    # read, sample 40 dropped); 3: missing (100 lost).
    assert report["records"] == good(100) + good(35) + good(40)
    assert report["skipped"]["damaged_tar"] == 65 + 1 and report["skipped"]["missing_tar"] == 100
    planted = sum(report["skipped"][r] for r in BAD_KINDS)
    assert planted == 100 - good(100) + 35 - good(35) + 40 - good(40)
    assert report["input_samples"] == 100 + 100 + 41 + 100
    assert report["damaged_or_missing"] == {"damaged_shards": 2, "missing_shards": 1,
                                            "unknown_loss_shards": 1}
    assert sorted((d["samples_read"], d["expected"], d["missing"]) for d in report["damage"]) == [
        (0, 100, True), (35, 100, False), (40, None, False)]
    # The missing shard restored: only it is prepared again, and nothing is missing any more.
    shutil.copy(os.path.join(tars, "00003.tar"), directory)
    assert prepare_main([*args, "--missing_shards", "count"]) == 0
    with open(os.path.join(out, "prepare_report.json")) as f:
        again = json.load(f)
    assert again["written_now"] == 1 and again["skipped"]["missing_tar"] == 0
    assert again["records"] == report["records"] + good(100)
    assert again["damaged_or_missing"]["missing_shards"] == 0
    assert set(SHARD_COUNTS) == set(again["damaged_or_missing"])
