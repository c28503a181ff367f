"""HF CLIP interop: import (two tiny CLIPModels) matches transformers, export round trip, errors.

References are randomly initialised transformers CLIPModels saved offline; tolerances fp32 1e-4.
"""

import json
import os
import shutil

import numpy as np
import pytest

from tests.interop_runs import run_forward as vlmjax_forward
from tests.test_tokenizers import NO_FTFY_NEEDED
from vlmjax.errors import CheckpointError, ConfigError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TEXTS = ["a photo of a cat", "two dogs, on the GRASS!"]
# (hidden_act, image_size, channels, patch, vision width/depth/heads, text width/depth/heads)
CONFIGS = {
    "quick_gelu": dict(act="quick_gelu", image=32, channels=3, patch=16, v=(32, 1, 2), t=(32, 1, 2)),
    "gelu": dict(act="gelu", image=28, channels=1, patch=14, v=(24, 2, 3), t=(32, 2, 4)),
}


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory) -> str:
    """CLIP's real vocab.json + merges.txt, built from the BPE file open_clip ships."""
    from vlmjax.tokenizers.clip_bpe import clip_vocab, default_bpe_path, read_bpe_gz_merges
    if not default_bpe_path():
        pytest.skip("open_clip's bpe_simple_vocab_16e6.txt.gz is not installed")
    merges = read_bpe_gz_merges(default_bpe_path())
    d = tmp_path_factory.mktemp("bpe")
    (d / "vocab.json").write_text(json.dumps(clip_vocab(merges)), encoding="utf-8")
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n",
                                  encoding="utf-8")
    return str(d)


def save_hf_clip(name: str, directory: str, bpe_dir: str) -> None:
    spec = CONFIGS[name]
    (vw, vd, vh), (tw, td, th) = spec["v"], spec["t"]
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=tw, intermediate_size=2 * tw,
                         num_hidden_layers=td, num_attention_heads=th, max_position_embeddings=77,
                         hidden_act=spec["act"], bos_token_id=49406, eos_token_id=49407),
        vision_config=dict(hidden_size=vw, intermediate_size=3 * vw, num_hidden_layers=vd,
                           num_attention_heads=vh, image_size=spec["image"],
                           patch_size=spec["patch"], num_channels=spec["channels"],
                           hidden_act=spec["act"]),
        projection_dim=16, logit_scale_init_value=2.0)
    torch.manual_seed(len(name))
    model = transformers.CLIPModel(config)
    with torch.no_grad():  # non-trivial LayerNorms and biases, so their mapping is tested
        for n, p in model.named_parameters():
            if "layer_norm" in n or "layrnorm" in n or n.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(directory)  # safetensors
    for f in ("vocab.json", "merges.txt"):
        shutil.copyfile(os.path.join(bpe_dir, f), os.path.join(directory, f))
    if spec["channels"] == 1:
        with open(os.path.join(directory, "preprocessor_config.json"), "w") as f:
            json.dump({"image_mean": [0.5], "image_std": [0.25]}, f)


@pytest.fixture(scope="module")
def converted(tmp_path_factory, bpe_dir) -> dict:
    """name -> (HF dir, vlmjax workdir) for both configurations."""
    from vlmjax.interop.hf_import import import_hf
    out = {}
    for name in CONFIGS:
        hf_dir, workdir = (str(tmp_path_factory.mktemp(f"{name}_{k}")) for k in ("hf", "run"))
        save_hf_clip(name, hf_dir, bpe_dir)
        import_hf(hf_dir, workdir)
        out[name] = hf_dir, workdir
    return out


def hf_forward(hf_dir: str, ours: dict) -> dict:
    model = transformers.CLIPModel.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ours["ids"], dtype=torch.long),
                    attention_mask=torch.tensor(ours["mask"], dtype=torch.long),
                    pixel_values=torch.tensor(ours["pixels"]).permute(0, 3, 1, 2))
    return {"image": out.image_embeds.numpy(), "text": out.text_embeds.numpy(),
            "logits": out.logits_per_image.numpy()}


def random_images(workdir: str, n: int = 3) -> np.ndarray:
    from vlmjax.train.workdir import load_saved_config
    image = load_saved_config(workdir).model.image
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, image.image_size, image.image_size, image.channels), np.uint8)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_import_matches_transformers(converted, name):
    hf_dir, workdir = converted[name]
    ours = vlmjax_forward(workdir, random_images(workdir), TEXTS)
    ref = hf_forward(hf_dir, ours)
    for key in ("image", "text", "logits"):
        np.testing.assert_allclose(ours[key], ref[key], atol=1e-4, rtol=0, err_msg=key)
    saved = _load(os.path.join(workdir, "config.json"))
    assert saved["model"]["activation"] == name
    assert saved["model"]["image"]["ln_pre"] and saved["model"]["image"]["pool"] == "cls"


def test_tokenizer_ids_match_clip_tokenizer(converted):
    hf_dir, workdir = converted["quick_gelu"]
    from vlmjax.train.workdir import load_saved_config, tokenizer_for_run
    tok = tokenizer_for_run(load_saved_config(workdir).to_dict(), workdir)
    texts = NO_FTFY_NEEDED + ["", "ünïcödé… «quotes» — dash", "x" * 500]
    ids, mask = tok.encode(texts, 77)
    ref = transformers.CLIPTokenizer.from_pretrained(hf_dir)(
        texts, padding="max_length", max_length=77, truncation=True)
    ref_ids, ref_mask = np.asarray(ref["input_ids"]), np.asarray(ref["attention_mask"]).astype(bool)
    np.testing.assert_array_equal(mask, ref_mask)
    np.testing.assert_array_equal(np.where(mask, ids, -1), np.where(ref_mask, ref_ids, -1))


def test_export_round_trip(converted, tmp_path):
    from vlmjax.interop.hf_export import export_hf
    _, workdir = converted["quick_gelu"]
    out = str(tmp_path / "exported")
    export_hf(workdir, out)
    ours = vlmjax_forward(workdir, random_images(workdir), TEXTS)
    ref = hf_forward(out, ours)
    for key in ("image", "text", "logits"):
        np.testing.assert_allclose(ours[key], ref[key], atol=1e-4, rtol=0, err_msg=key)
    for cls in (transformers.CLIPTokenizer, transformers.CLIPTokenizerFast):
        ids = cls.from_pretrained(out)(TEXTS, padding="max_length", max_length=77)["input_ids"]
        np.testing.assert_array_equal(np.where(ours["mask"], np.asarray(ids), -1),
                                      np.where(ours["mask"], ours["ids"], -1))
    from PIL import Image  # CLIPProcessor prepares RGB images as vlmjax does
    processor = transformers.CLIPProcessor.from_pretrained(out)
    pixels = processor(images=[Image.fromarray(x) for x in random_images(workdir)],
                       return_tensors="pt")["pixel_values"].permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(pixels, ours["pixels"], atol=1e-6, rtol=0)


def test_export_refuses_what_hf_cannot_represent(converted):
    from vlmjax.interop.hf_export import check_exportable
    from vlmjax.train.workdir import load_saved_config
    cfg = load_saved_config(converted["quick_gelu"][1]).to_dict()
    for key, value in (("pool", "map"), ("ln_pre", False)):
        bad = json.loads(json.dumps(cfg))
        bad["model"]["image"][key] = value
        with pytest.raises(ConfigError, match=f"model.image.{key}"):
            check_exportable(bad)
    with pytest.raises(ConfigError, match="model.use_logit_bias"):
        check_exportable({**cfg, "model": {**cfg["model"], "use_logit_bias": True}})


def test_export_folds_the_patch_bias_into_patch_positions(converted):
    """patch @ W + bias + pos == patch @ W + (pos + bias) for the patch tokens; the class token
    (position 0) never sees the bias."""
    import jax

    from tests.interop_runs import restore_run
    from vlmjax.interop.hf_export import hf_tensors
    run = restore_run(converted["quick_gelu"][1])
    params = jax.tree.map(np.asarray, run.params)
    bias = np.linspace(-1, 1, params["image"]["patch_bias"].shape[0], dtype=np.float32)
    params["image"]["patch_bias"] = bias
    pos = hf_tensors(params, run.cfg)["vision_model.embeddings.position_embedding.weight"]
    ours = params["image"]["pos_embed"]
    np.testing.assert_array_equal(pos[0], ours[0])
    np.testing.assert_array_equal(pos[1:], ours[1:] + bias[None])


def _load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _dump(content: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(content, f)


def _copy(hf_dir: str, tmp_path) -> str:
    bad = str(tmp_path / "bad_hf")
    shutil.copytree(hf_dir, bad)
    return bad


def test_import_errors_name_the_problem(converted, tmp_path):
    from safetensors.numpy import load_file, save_file

    from vlmjax.interop.hf_import import import_hf
    hf_dir = converted["quick_gelu"][0]
    bad = _copy(hf_dir, tmp_path)  # a tensor no vlmjax parameter takes
    tensors = load_file(os.path.join(bad, "model.safetensors"))
    tensors["vision_model.embeddings.patch_embedding.bias"] = np.zeros(32, np.float32)
    save_file(tensors, os.path.join(bad, "model.safetensors"))
    with pytest.raises(CheckpointError, match="vision_model.embeddings.patch_embedding.bias"):
        import_hf(bad, str(tmp_path / "a"))
    shutil.rmtree(bad)
    bad = _copy(hf_dir, tmp_path)  # config.json disagrees with the weights
    config = _load(os.path.join(bad, "config.json"))
    config["text_config"]["intermediate_size"] = 80
    _dump(config, os.path.join(bad, "config.json"))
    with pytest.raises(CheckpointError, match=r"text_model.encoder.layers.0.mlp.fc1.weight"):
        import_hf(bad, str(tmp_path / "b"))
    shutil.rmtree(bad)
    bad = _copy(hf_dir, tmp_path)  # tokenizer file missing
    os.remove(os.path.join(bad, "merges.txt"))
    with pytest.raises(CheckpointError, match="merges.txt"):
        import_hf(bad, str(tmp_path / "c"))
    config = _load(os.path.join(bad, "config.json"))
    config["vision_config"]["hidden_act"] = "gelu_new"
    _dump(config, os.path.join(bad, "config.json"))
    with pytest.raises(CheckpointError, match="vision_config.hidden_act='gelu_new'"):
        import_hf(bad, str(tmp_path / "d"))


def test_every_registered_source_loads():
    from vlmjax.interop.sources import SOURCES, get_source
    for name in SOURCES:
        assert callable(get_source(name)), name
    with pytest.raises(ConfigError, match="not a known source"):
        get_source("onnx")


def test_evaluate_runs_on_converted_workdir(converted, synthetic_data_dir, tmp_path):
    import ml_collections

    from vlmjax.evaluate import evaluate
    from vlmjax.train.workdir import load_saved_config
    workdir = str(tmp_path / "run")
    shutil.copytree(converted["gelu"][1], workdir)  # 28 px, 1 channel like Fashion-MNIST
    config = load_saved_config(workdir)
    config.data.dir = synthetic_data_dir
    config.evals = ml_collections.ConfigDict(
        {"zeroshot": {"kind": "zeroshot", "batch_size": 200}})
    results = evaluate(config, workdir)
    assert results["step"] == 0 and 0 <= results["evals"]["zeroshot/fashion_mnist"]["acc1"] <= 1


def test_lit_fine_tuning_starts_from_the_imported_weights(converted, synthetic_data_dir, tmp_path):
    """`vlmjax.train --workdir RUN` without --config continues from the imported weights with
    the overrides applied, here LiT (a locked image tower: another optimizer-state structure)."""
    import jax

    from vlmjax.config import config_from_args
    from vlmjax.train.loop import train
    from vlmjax.train.workdir import load_saved_config
    workdir = str(tmp_path / "run")
    shutil.copytree(converted["gelu"][1], workdir)
    before = vlmjax_forward(workdir, random_images(workdir), TEXTS)
    config = config_from_args("", [f"data.dir={synthetic_data_dir}", "train.locked_tower=image",
                                   "train.num_steps=2", "train.batch_size=16", "train.log_every=1",
                                   "train.checkpoint_every=2", "optimizer.warmup_steps=1"],
                              base=load_saved_config(workdir))
    config.evals = {}
    train(config, workdir)
    after = vlmjax_forward(workdir, random_images(workdir), TEXTS)
    np.testing.assert_array_equal(after["image"], before["image"])  # locked
    assert not np.allclose(after["text"], before["text"], atol=1e-6)  # trained from the import
    assert np.abs(after["text"] - before["text"]).max() < 0.5  # a small step, not a fresh model
    assert jax.device_count() == 8
