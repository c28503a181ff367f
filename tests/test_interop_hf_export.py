"""`--to hf` of a run trained here (trained_bpe tokenizer, 1-channel images, a non-zero patch
bias): transformers' CLIPModel, CLIPTokenizer and CLIPProcessor reproduce vlmjax at fp32 1e-4;
what HF cannot express is refused, and no refusal or failure leaves an output directory.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO, TINY_CONFIG
from tests.interop_runs import flat_params, forward, restore_run
from tests.test_tokenizers import NO_FTFY_NEEDED
from vlmjax.errors import ConfigError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TEXTS = ["a photo of a trouser", "a blurry photo of a bag", "two dogs, on the GRASS!",
         "a caption far longer than the twelve tokens of the tiny context, so it is truncated"]
TOKENIZER_TEXTS = NO_FTFY_NEEDED + ["", "a photo of a t-shirt/top", "ankle boot " * 20]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synthetic_data_dir) -> tuple[str, str]:
    """(workdir, export dir): the tiny CLIP with HF's options (class token, ln_pre) trained 4
    steps, then exported by the command line."""
    from vlmjax.config import load_config_file
    from vlmjax.train.loop import train
    config = load_config_file(TINY_CONFIG)
    config.data.dir = synthetic_data_dir
    config.model.image.ln_pre = True
    config.train.num_steps = config.train.checkpoint_every = 4
    config.evals = {}
    workdir = str(tmp_path_factory.mktemp("run"))
    train(config, workdir)
    output = os.path.join(str(tmp_path_factory.mktemp("export")), "hf")
    result = subprocess.run([sys.executable, "-m", "vlmjax.convert", "--to", "hf", "--workdir",
                             workdir, "--output", output], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, output


def grayscale_images(n: int = 5) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (n, 28, 28, 1), np.uint8)


def test_trained_run_exports_to_transformers(trained):
    """CLIPProcessor prepares grayscale images and texts as vlmjax does, and CLIPModel on its
    output gives vlmjax's embeddings and logits."""
    from PIL import Image
    workdir, output = trained
    run = restore_run(workdir)
    assert run.cfg["tokenizer"]["kind"] == "trained_bpe"
    assert run.cfg["model"]["image"]["channels"] == 1
    assert np.abs(flat_params(run)["image/patch_bias"]).max() > 1e-3  # trained, so folded
    images = grayscale_images()
    ours = forward(run, images, TEXTS)
    processor = transformers.CLIPProcessor.from_pretrained(output)
    assert isinstance(processor.tokenizer, transformers.CLIPTokenizer)
    ctx = run.cfg["tokenizer"]["context_length"]
    inputs = processor(text=TEXTS, images=[Image.fromarray(x[..., 0], "L") for x in images],
                       padding="max_length", max_length=ctx, truncation=True,
                       return_tensors="pt")
    pixels = inputs["pixel_values"].permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(pixels, ours["pixels"], atol=1e-6, rtol=0)
    mask = inputs["attention_mask"].numpy() == 1
    np.testing.assert_array_equal(mask, ours["mask"])
    np.testing.assert_array_equal(inputs["input_ids"].numpy()[mask], ours["ids"][mask])
    model = transformers.CLIPModel.from_pretrained(output).eval()
    with torch.no_grad():
        out = model(**inputs)
    ref = {"image": out.image_embeds, "text": out.text_embeds, "logits": out.logits_per_image}
    for key, value in ref.items():
        np.testing.assert_allclose(value.numpy(), ours[key], atol=1e-4, rtol=0, err_msg=key)


def test_trained_bpe_exports_with_the_runs_ids(trained):
    workdir, output = trained
    run = restore_run(workdir)
    theirs = transformers.CLIPTokenizer.from_pretrained(output)
    for length in (run.cfg["tokenizer"]["context_length"], 77):
        ids, mask = run.tokenizer.encode(TOKENIZER_TEXTS, length)
        ref = theirs(TOKENIZER_TEXTS, padding="max_length", max_length=length, truncation=True)
        ref_mask = np.asarray(ref["attention_mask"]) == 1
        np.testing.assert_array_equal(mask, ref_mask)
        np.testing.assert_array_equal(np.asarray(ref["input_ids"])[mask], ids[mask])
    assert np.any(np.asarray(ref["input_ids"])[mask] > 2 * 256 + 1)  # merged tokens are used


def _copy_run(workdir: str, tmp_path) -> str:
    copy = str(tmp_path / "run")
    shutil.copytree(workdir, copy)
    return copy


def _edit_json(path: str, edit) -> None:
    with open(path) as f:
        content = json.load(f)
    edit(content)
    with open(path, "w") as f:
        json.dump(content, f)


def test_refusals_write_nothing(trained, tmp_path):
    """gap pooling (CLIPModel pools the class token) is refused naming the setting, and a
    non-empty --output is never written into."""
    from vlmjax.interop.hf_export import export_hf
    workdir = _copy_run(trained[0], tmp_path)
    _edit_json(os.path.join(workdir, "config.json"),
               lambda c: c["model"]["image"].update(pool="gap"))
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="model.image.pool='gap'"):
        export_hf(workdir, str(out))
    assert sorted(os.listdir(tmp_path)) == ["run"]
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ConfigError, match="not an empty directory"):
        export_hf(trained[0], str(out))
    assert os.listdir(out) == ["keep.txt"]


def _group_digits(workdir: str) -> None:
    """The run's tokenizer with digit runs as one word (CLIP splits every digit): no longer
    what CLIPTokenizer does."""
    def edit(tok: dict) -> None:
        pattern = tok["pre_tokenizer"]["pretokenizers"][0]["pattern"]
        assert r"[\p{N}]|" in pattern["Regex"]
        pattern["Regex"] = pattern["Regex"].replace(r"[\p{N}]|", r"[\p{N}]+|")
    _edit_json(os.path.join(workdir, "tokenizer", "tokenizer.json"), edit)


def test_failure_after_writing_leaves_no_output(trained, tmp_path, monkeypatch):
    """A tokenizer CLIPTokenizer does not reproduce is found after the files are written (the
    check loads them): the error names a differing text and nothing is left behind."""
    from vlmjax.interop import hf_export, hf_files
    workdir = _copy_run(trained[0], tmp_path)
    _group_digits(workdir)
    written = []
    write = hf_files.write_tensors
    monkeypatch.setattr(hf_files, "write_tensors", lambda t, p: (written.append(p), write(t, p)))
    with pytest.raises(ConfigError, match="encodes differently from CLIPTokenizer.*1234567890"):
        hf_export.export_hf(workdir, str(tmp_path / "out"))
    assert len(written) == 1 and os.path.dirname(written[0]).startswith(str(tmp_path / ".out"))
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_without_transformers_only_the_exact_clip_pipeline_exports(trained, tmp_path,
                                                                   monkeypatch):
    from vlmjax.interop.hf_export import export_hf
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers fails
    export_hf(trained[0], str(tmp_path / "ok"))
    with open(tmp_path / "ok" / "vocab.json") as f, open(os.path.join(trained[1], "vocab.json")) as g:
        assert json.load(f) == json.load(g)
    workdir = _copy_run(trained[0], tmp_path)
    _group_digits(workdir)
    with pytest.raises(ConfigError, match="not the exact CLIP BPE pipeline"):
        export_hf(workdir, str(tmp_path / "bad"))
    assert sorted(os.listdir(tmp_path)) == ["ok", "run"]


def test_tokenizers_other_than_clip_bpe_are_refused(trained, tmp_path):
    from vlmjax.interop.hf_export import export_hf
    workdir = _copy_run(trained[0], tmp_path)
    _edit_json(os.path.join(workdir, "tokenizer", "tokenizer_spec.json"),
               lambda s: s.update(kind="sentencepiece", file="spm.model"))
    with pytest.raises(ConfigError, match="'sentencepiece' model, not a byte-level BPE"):
        export_hf(workdir, str(tmp_path / "out"))
    assert sorted(os.listdir(tmp_path)) == ["run"]
