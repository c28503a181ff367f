"""IDX reading, captions, and the grain pipeline: determinism, resume state, process sharding."""

import gzip
import os
import shutil
import zlib

import numpy as np
import pytest

from tests.conftest import write_split
from vlmjax.data.captions import build_caption_table, caption_texts
from vlmjax.data.datasets import caption_vocabulary, check_dataset, dataset_prompts, load_split
from vlmjax.data.idx import read_idx, read_idx_header, write_idx
from vlmjax.data.pipeline import example_uniforms, train_dataset, train_iterator
from vlmjax.errors import DataError
from vlmjax.tokenizers import build_tokenizer


def test_read_idx_hand_written_header(tmp_path):
    # magic 0x00000803: uint8, 3 dims (2 x 2 x 3), then the bytes 0..11 row-major.
    raw = bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 3]) + bytes(range(12))
    path = tmp_path / "x-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(raw)
    np.testing.assert_array_equal(read_idx(str(path)), np.arange(12, dtype=np.uint8).reshape(2, 2, 3))


def test_idx_round_trip_and_big_endian_ints(tmp_path):
    labels = np.array([1, 70000, -3], np.int32)
    write_idx(str(tmp_path / "l.idx"), labels)
    assert (tmp_path / "l.idx").read_bytes()[:12] == bytes([0, 0, 0x0C, 1, 0, 0, 0, 3, 0, 0, 0, 1])
    np.testing.assert_array_equal(read_idx(str(tmp_path / "l.idx")), labels)


def test_corrupt_idx_files_raise_data_errors(tmp_path):
    bad = tmp_path / "bad.idx"
    bad.write_bytes(b"\x12\x34\x08\x01\x00\x00\x00\x05abc")
    with pytest.raises(DataError, match="bad magic"):
        read_idx(str(bad))
    short = tmp_path / "short.idx"
    short.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 5]) + b"abc")
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_idx(str(short))


def test_real_fashion_mnist_when_installed():
    directory = "/usr/share/datasets/fashion-mnist"
    if not os.path.isdir(directory):
        pytest.skip("dataset-fashion-mnist is not installed (launch/setup.sh installs it)")
    images, labels = load_split("fashion_mnist", directory, "test")
    assert images.shape == (10_000, 28, 28, 1) and images.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(labels), [1000] * 10)


REAL_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def _corrupt_deflate(path: str) -> None:
    """Flips 16 bytes of the deflate stream, from its middle on, at the first place where zlib
    itself fails (elsewhere the damage may decode to wrong bytes that only the CRC catches)."""
    with open(path, "rb") as f:
        data = f.read()
    for start in range(len(data) // 2, len(data) - 24, 97):
        damaged = bytearray(data)
        damaged[start:start + 16] = bytes(b ^ 0xFF for b in data[start:start + 16])
        try:
            gzip.decompress(bytes(damaged))
        except zlib.error:
            with open(path, "wb") as f:
                f.write(bytes(damaged))
            return
        except (OSError, EOFError):
            continue
    raise AssertionError(f"no flip of {path} makes zlib fail")


def test_corrupt_deflate_stream_of_real_fashion_mnist_is_one_data_error(tmp_path):
    if not os.path.isdir(REAL_FASHION_MNIST):
        pytest.skip("dataset-fashion-mnist is not installed (launch/setup.sh installs it)")
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(os.path.join(REAL_FASHION_MNIST, name), tmp_path / name)
    labels = str(tmp_path / "t10k-labels-idx1-ubyte.gz")
    _corrupt_deflate(labels)
    with pytest.raises(DataError, match=r"is damaged \(corrupt gzip data: Error -3") as error:
        load_split("fashion_mnist", str(tmp_path), "test")
    assert labels in str(error.value)
    assert "apt-get install --reinstall dataset-fashion-mnist" in str(error.value)
    with pytest.raises(DataError, match="is damaged"):
        read_idx(labels)


def test_read_idx_header_reads_the_declared_dimensions_only(tmp_path):
    path = str(tmp_path / "x-idx3-ubyte.gz")
    write_idx(path, np.zeros((5, 7, 3), np.uint8))
    with open(path, "r+b") as f:  # the data is cut off: the header still reads
        f.truncate(40)
    assert read_idx_header(path) == (np.dtype(np.uint8), (5, 7, 3))


def _split_with(directory, images: np.ndarray | None = None, labels: np.ndarray | None = None,
                n: int = 30) -> str:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8) if images is None else images
    labels = np.arange(n) % 10 if labels is None else labels
    for split in ("train", "t10k"):
        write_split(str(directory), split, images, labels)
    return str(directory)


def test_idx_header_with_permuted_dimensions_is_named_before_loading(tmp_path):
    # The same bytes under a header that declares 28 x 30 x 28: as many values, so the length
    # check passes; read as [N, H, W] it would be 28 scrambled "images" of 30 x 28.
    directory = _split_with(tmp_path)
    path = os.path.join(directory, "train-images-idx3-ubyte.gz")
    with gzip.open(path, "rb") as f:
        raw = f.read()
    with gzip.open(path, "wb") as f:
        f.write(raw[:4] + b"".join(n.to_bytes(4, "big") for n in (28, 30, 28)) + raw[16:])
    message = (r"train-images-idx3-ubyte.gz declares images of shape 28 x 30 x 28 but "
               r"fashion_mnist images are N x 28 x 28; its header is damaged")
    with pytest.raises(DataError, match=message):
        check_dataset("fashion_mnist", directory, split="train")  # what config validation runs
    with pytest.raises(DataError, match=message):
        load_split("fashion_mnist", directory, "train")


@pytest.mark.parametrize("bad,more", [([10], ""), ([255, 11, 12], r" \(and 2 more\)")])
def test_labels_outside_the_classes_are_a_data_error_at_load_time(tmp_path, bad, more):
    labels = np.arange(30) % 10
    labels[17:17 + len(bad)] = bad
    directory = _split_with(tmp_path, labels=labels)
    with pytest.raises(DataError, match=rf"t10k-labels-idx1-ubyte.gz: label {bad[0]} of example 17"
                                        rf"{more} is not a class of fashion_mnist, whose labels are "
                                        r"0\.\.9; the file is damaged"):
        load_split("fashion_mnist", directory, "test")


def test_prompts_and_user_files(tmp_path):
    classnames, templates = dataset_prompts("fashion_mnist")
    assert len(classnames) == 10 and all("{c}" in t for t in templates)
    (tmp_path / "names.json").write_text('{"fashion_mnist": ["a","b","c","d","e","f","g","h","i","j"]}')
    (tmp_path / "templates.json").write_text('{"fashion_mnist": ["itap of a {c}."]}')
    names, temps = dataset_prompts("fashion_mnist", str(tmp_path / "names.json"),
                                   str(tmp_path / "templates.json"))
    assert names[0] == "a" and temps == ["itap of a {c}."]
    (tmp_path / "other.json").write_text('{"cifar10": ["x"]}')
    with pytest.raises(DataError, match="no entry for 'fashion_mnist'"):
        dataset_prompts("fashion_mnist", templates_file=str(tmp_path / "other.json"))


@pytest.fixture(scope="module")
def table():
    names, templates = caption_vocabulary("fashion_mnist")
    texts, _ = caption_texts(names, templates)
    tokenizer = build_tokenizer("trained_bpe", vocab_size=600, texts=texts)
    return build_caption_table(names, templates, tokenizer, 16)


def _data(n=96):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(n, 28, 28, 1)).astype(np.uint8)
    labels = (np.arange(n) % 10).astype(np.int32)
    images[:, 0, 0, 0] = np.arange(n)  # pixel (0, 0) identifies the example
    return images, labels


def test_captions_match_labels(table):
    images, labels = _data()
    ds = train_dataset(images, labels, table, global_batch_size=16, seed=3)
    names, _ = caption_vocabulary("fashion_mnist")
    for b in range(3):
        batch = ds[b]
        for i in range(16):
            row = np.nonzero((table.ids == batch["text"][i]).all(axis=1))[0]
            assert len(row), "the caption comes from the table"
            text = table.texts[row[0]]
            assert any(name in text for name in names[batch["label"][i]]), text
            assert batch["label"][i] == labels[batch["image"][i, 0, 0, 0]]


def test_epochs_cover_every_example_once_and_reshuffle(table):
    images, labels = _data(96)
    ds = train_dataset(images, labels, table, global_batch_size=16, seed=0)
    epoch = [ds[b]["image"][:, 0, 0, 0] for b in range(12)]  # two epochs of 6 batches
    first, second = np.concatenate(epoch[:6]), np.concatenate(epoch[6:])
    assert sorted(first) == list(range(96)) and sorted(second) == list(range(96))
    assert not np.array_equal(first, second)


def test_process_rows_assemble_the_single_process_batch(table):
    images, labels = _data(96)
    whole = train_dataset(images, labels, table, global_batch_size=16, seed=0, flip=True,
                          translate=2)
    for b in range(8):  # past an epoch boundary
        parts = [train_dataset(images, labels, table, global_batch_size=16, seed=0, flip=True,
                               translate=2, rows=slice(4 * p, 4 * p + 4))[b] for p in range(4)]
        for key, value in whole[b].items():
            np.testing.assert_array_equal(np.concatenate([part[key] for part in parts]), value)


def test_example_uniforms_are_uniform_and_keyed_by_position():
    u = example_uniforms(7, np.arange(100_000), 2)
    assert u.min() >= 0 and u.max() < 1
    np.testing.assert_allclose(np.histogram(u[:, 0], bins=10, range=(0, 1))[0] / 1e4, 1, atol=0.05)
    assert abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < 0.01
    np.testing.assert_array_equal(example_uniforms(7, np.arange(5, 10), 2), u[5:10])
    assert not np.array_equal(example_uniforms(8, np.arange(5), 2), u[:5])


def test_iterator_state_resumes_the_same_batches(table):
    images, labels = _data()
    ds = train_dataset(images, labels, table, global_batch_size=8, seed=1, flip=True, translate=2)
    it = train_iterator(ds, num_threads=2, prefetch=2)
    for _ in range(5):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(4)]
    resumed = train_iterator(ds, num_threads=2, prefetch=2)
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


def test_augmentation_flip_and_translate(table):
    images, labels = _data(16)
    plain = train_dataset(images, labels, table, global_batch_size=16, seed=0)[0]
    augmented = train_dataset(images, labels, table, global_batch_size=16, seed=0, flip=True,
                              translate=3)[0]
    assert augmented["image"].shape == plain["image"].shape
    assert not np.array_equal(augmented["image"], plain["image"])
    np.testing.assert_array_equal(augmented["label"], plain["label"])
