"""open_clip interop: a ViT CLIP (QuickGELU) and a CoCa (GELU) imported with `--from open_clip`
match open_clip 3.3 to 1e-4 in fp32; tokenizer ids, .bin vs safetensors, errors; sharded HF
checkpoints.

The references come from tests/open_clip_reference.py, run once per session as a subprocess in
the open_clip environment (`bash launch/setup_open_clip.sh` creates .venv-openclip; override its
python with $VLMJAX_OPEN_CLIP_PYTHON): randomly initialised small custom configs, registered
with open_clip.add_model_config and built by open_clip.create_model.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.interop_runs import flat_params, forward, restore_run
from tests.test_tokenizers import TRICKY
from vlmjax.errors import CheckpointError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXTS = ["a photo of a cat", "two dogs, on the GRASS!", "a small red car near a tree"]
VOCAB = 49408
MODELS = {
    # CLIP: QuickGELU, head_width 16, mlp_ratio 3, context 77; OpenAI image statistics; the
    # config is given with --model-config and the vocabulary comes from the installed open_clip.
    "clip_quickgelu": {"seed": 1, "config": {
        "embed_dim": 16, "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16,
                       "mlp_ratio": 3.0, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": VOCAB, "width": 32, "heads": 4,
                     "layers": 2}}},
    # CoCa: GELU, a pooler whose key width (48) differs from its own (32: separate q/k/v
    # weights), 9 queries (1 contrastive + 8 caption tokens), context 20, one-layer ViT and
    # unimodal tower (the CLIP tests layer indexing), two multimodal layers; read from the hub
    # layout (open_clip_config.json with preprocess_cfg, the BPE vocabulary beside the weights).
    "coca": {"seed": 2, "bpe_beside": True,
             "preprocess_cfg": {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]},
             "config": {
                 "embed_dim": 32, "custom_text": True,
                 "vision_cfg": {"image_size": 32, "layers": 1, "width": 48, "head_width": 16,
                                "patch_size": 8, "attentional_pool": True, "attn_pooler_heads": 4,
                                "attn_pooler_queries": 9, "output_tokens": True},
                 "text_cfg": {"context_length": 20, "vocab_size": VOCAB, "width": 32, "heads": 4,
                              "layers": 1, "embed_cls": True, "output_tokens": True},
                 "multimodal_cfg": {"context_length": 20, "vocab_size": VOCAB, "width": 32,
                                    "heads": 4, "layers": 2}}},
}


def open_clip_python() -> str:
    """The reference environment's python; the test fails (not skips) without it."""
    path = os.environ.get("VLMJAX_OPEN_CLIP_PYTHON") or os.path.join(
        REPO, ".venv-openclip", "bin", "python")
    if not os.path.isfile(path):
        pytest.fail(f"the open_clip reference environment is missing ({path}); create it with "
                    "`bash launch/setup_open_clip.sh` or set VLMJAX_OPEN_CLIP_PYTHON")
    return path


@pytest.fixture(scope="session")
def reference(tmp_path_factory) -> str:
    """Directory with <model>/{config, weights, reference.npz} written by open_clip."""
    out = tmp_path_factory.mktemp("open_clip")
    spec = {"models": MODELS, "texts": TEXTS, "tricky": TRICKY, "images": 3}
    (out / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
    command = [open_clip_python(), os.path.join(REPO, "tests", "open_clip_reference.py"),
               str(out), str(out / "spec.json")]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          cwd=REPO) as done:
        import vlmjax.convert  # noqa: F401  (the importer's imports, while torch imports there)
        import vlmjax.interop.open_clip_import  # noqa: F401
        _, stderr = done.communicate(timeout=600)
    if done.returncode:
        pytest.fail(f"tests/open_clip_reference.py failed:\n{stderr[-3000:]}")
    return str(out)


def _config_arg(reference: str, name: str) -> list[str]:
    """--model-config for the CLIP; the CoCa's open_clip_config.json is found beside it."""
    if "preprocess_cfg" in MODELS[name]:
        return []
    return ["--model-config", os.path.join(reference, name, f"{name}.json")]


@pytest.fixture(scope="session")
def converted(reference, tmp_path_factory) -> dict[str, str]:
    """name -> vlmjax workdir, converted through the CLI."""
    from vlmjax.convert import main
    out = {}
    for name in MODELS:
        workdir = str(tmp_path_factory.mktemp(f"{name}_run"))
        assert main(["--from", "open_clip", "--source", os.path.join(reference, name),
                     "--workdir", workdir, *_config_arg(reference, name)]) == 0
        out[name] = workdir
    return out


@pytest.fixture(scope="session")
def restored(converted) -> dict:
    """name -> the converted run restored as evaluate does, on one device (the device the
    import wrote from, so the restore reuses the writer's compilations)."""
    import jax
    return {name: restore_run(workdir, jax.devices()[:1]) for name, workdir in converted.items()}


def _reference(reference: str, name: str) -> dict:
    return dict(np.load(os.path.join(reference, name, "reference.npz")))


@pytest.mark.parametrize("name", list(MODELS))
def test_import_matches_open_clip(reference, restored, name):
    ref = _reference(reference, name)
    ours = forward(restored[name], ref["images"], TEXTS)
    np.testing.assert_array_equal(ours["ids"], ref["ids"])  # same tokens in both models
    keys = ("image", "text", "logits") + (("caption_logits",) if name == "coca" else ())
    for key in keys:
        assert ours[key].shape == ref[key].shape, key
        np.testing.assert_allclose(ours[key], ref[key], atol=1e-4, rtol=0, err_msg=key)
    model = restored[name].cfg["model"]
    assert model["activation"] == ("quick_gelu" if name == "clip_quickgelu" else "gelu")
    if name == "coca":
        assert model["name"] == "coca" and model["coca"]["pooler"] == "open_clip"
        assert restored[name].cfg["objective"]["name"] == "coca"


def test_converted_configs_are_valid_for_training(converted):
    """`vlmjax.evaluate` / `vlmjax.train --workdir` start from the saved config: it passes
    validation, and for training only the data has to fit the imported model."""
    import jax

    from vlmjax.config.validate import validate
    from vlmjax.errors import ConfigError
    from vlmjax.train.workdir import load_saved_config
    for workdir in converted.values():
        config = load_saved_config(workdir)
        validate(config, jax.device_count(), 1, training=False)
        # The saved data section is a placeholder (grayscale 28 px Fashion-MNIST), never resized
        # to an RGB model's input: training names that, before anything compiles.
        with pytest.raises(ConfigError, match=r"\(they are not resized\), but model\.image"):
            validate(config, jax.device_count(), 1)


def test_tokenizer_ids_match_open_clip(reference, converted, restored):
    """The run's stored tokenizer encodes like open_clip's tokenizer of the model (contexts 77
    and 20): unicode, punctuation, HTML entities, over-long and empty strings."""
    for name, run in restored.items():
        ids, _ = run.tokenizer.encode(TRICKY, run.cfg["tokenizer"]["context_length"])
        np.testing.assert_array_equal(ids, _reference(reference, name)["tricky_ids"],
                                      err_msg=name)
        assert os.path.isfile(os.path.join(converted[name], "tokenizer", "tokenizer.json"))


def test_training_checkpoint_bin_gives_the_safetensors_params(reference, monkeypatch):
    """epoch_1.pt ({"state_dict": {"module.…": …}}, as open_clip's training writes it) reads
    through torch to exactly the tensors of open_clip_model.safetensors (so to the same
    params); without torch it is refused, naming the file."""
    from vlmjax.interop.open_clip_import import read_state_dict
    directory = os.path.join(reference, "clip_quickgelu")
    pt = os.path.join(directory, "epoch_1.pt")
    tensors = read_state_dict(pt)
    want = read_state_dict(os.path.join(directory, "open_clip_model.safetensors"))
    assert tensors.keys() == want.keys()
    for key in want:
        np.testing.assert_array_equal(tensors[key], want[key], err_msg=key)
    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
    with pytest.raises(CheckpointError, match=r"epoch_1\.pt is a PyTorch pickle and torch is not"):
        read_state_dict(pt)


def _clip_model(config: dict) -> tuple:
    """(OpenClipModel, param shapes) of an open_clip CLIP config."""
    from vlmjax.interop.open_clip_config import vlmjax_config
    from vlmjax.interop.workdir_writer import param_shapes
    model = vlmjax_config(config, "cfg")
    return model, param_shapes(model.config.to_dict(), VOCAB)


@pytest.fixture(scope="module")
def clip_tensors(reference) -> dict[str, np.ndarray]:
    from vlmjax.interop.open_clip_import import read_state_dict
    return read_state_dict(os.path.join(reference, "clip_quickgelu", "open_clip_model.safetensors"))


def test_custom_text_layout_maps_like_clip(clip_tensors):
    """CustomTextCLIP keeps the text tower under `text.` (open_clip renames old checkpoints so):
    both layouts give the same params."""
    from vlmjax.interop.open_clip_import import map_tensors
    text_keys = ("token_embedding", "positional_embedding", "transformer", "ln_final",
                 "text_projection")
    custom = {f"text.{k}" if k.startswith(text_keys) else k: v for k, v in clip_tensors.items()}
    model, shapes = _clip_model(MODELS["clip_quickgelu"]["config"])
    want = map_tensors(dict(clip_tensors), model, shapes, "clip", "cfg")
    got = map_tensors(custom, model, shapes, "custom", "cfg")
    assert want.keys() == got.keys()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def _write_config(tmp_path, name: str, edit) -> str:
    config = json.loads(json.dumps(MODELS[name]["config"]))
    edit(config)
    path = tmp_path / f"{name}_edited.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("section,key,value", [
    ("vision_cfg", "timm_model_name", "vit_base_patch16_224"),  # a timm image tower
    ("vision_cfg", "pos_embed_type", "sin_cos_2d"),  # fixed position embeddings
    ("text_cfg", "hf_model_name", "roberta-base"),  # a Hugging Face text tower
    ("text_cfg", "ls_init_value", 1e-5),  # LayerScale
    ("vision_cfg", "made_up_option", 1),  # not an open_clip key
])
def test_unsupported_architecture_is_refused_by_key(reference, tmp_path, section, key, value):
    from vlmjax.interop.open_clip_import import import_open_clip
    path = _write_config(tmp_path, "clip_quickgelu",
                         lambda c: c[section].__setitem__(key, value))
    workdir = tmp_path / "run"
    with pytest.raises(CheckpointError, match=rf"{section}\.{key}"):
        import_open_clip(os.path.join(reference, "clip_quickgelu"), str(workdir), path)
    assert not workdir.exists()  # refused before anything is written


def test_tensor_errors_name_tensor_and_parameter(clip_tensors):
    from vlmjax.interop.open_clip_import import map_tensors
    config = json.loads(json.dumps(MODELS["clip_quickgelu"]["config"]))
    config["text_cfg"]["mlp_ratio"] = 2.0  # the weights have 4
    with pytest.raises(CheckpointError, match=r"tensor transformer\.resblocks\.0\.mlp\.c_fc\.weight "
                       r"has shape \(128, 32\).*text/encoder/layers/0/mlp/fc1"):
        map_tensors(dict(clip_tensors), *_clip_model(config), "ckpt", "cfg")
    model, shapes = _clip_model(MODELS["clip_quickgelu"]["config"])
    with pytest.raises(CheckpointError, match=r"tensor visual\.head\.weight \(shape \(4, 16\)\) "
                       "maps to no vlmjax parameter"):
        map_tensors({**clip_tensors, "visual.head.weight": np.zeros((4, 16), np.float32)},
                    model, shapes, "ckpt", "cfg")
    missing = {k: v for k, v in clip_tensors.items() if k != "visual.ln_post.bias"}
    with pytest.raises(CheckpointError, match=r"no tensor visual\.ln_post\.bias \(for "
                       r"image/ln_post/bias\)"):
        map_tensors(missing, model, shapes, "ckpt", "cfg")


def test_missing_tokenizer_file_is_named(reference, tmp_path, monkeypatch):
    from vlmjax.interop import open_clip_import
    source = tmp_path / "coca"
    shutil.copytree(os.path.join(reference, "coca"), source)
    os.remove(source / "bpe_simple_vocab_16e6.txt.gz")
    (source / "vocab.json").write_text("{}", encoding="utf-8")  # merges.txt is missing
    with pytest.raises(CheckpointError, match=r"merges\.txt does not exist"):
        open_clip_import.import_open_clip(str(source), str(tmp_path / "a"))
    os.remove(source / "vocab.json")
    monkeypatch.setattr(open_clip_import.clip_bpe, "default_bpe_path", lambda: "")  # no open_clip
    with pytest.raises(CheckpointError, match=r"bpe_simple_vocab_16e6\.txt\.gz does not exist"):
        open_clip_import.import_open_clip(str(source), str(tmp_path / "b"))


def _shard(directory: str, tensors: dict[str, np.ndarray], torch_format: bool) -> None:
    """Writes `tensors` as two shards + the transformers index file into `directory`."""
    names = sorted(tensors)
    shards = {f"{'pytorch_model' if torch_format else 'model'}-0000{i + 1}-of-00002."
              f"{'bin' if torch_format else 'safetensors'}": names[i::2] for i in range(2)}
    for shard, keys in shards.items():
        part = {k: np.require(tensors[k], requirements="C") for k in keys}
        if torch_format:
            import torch
            torch.save({k: torch.from_numpy(v.copy()) for k, v in part.items()},
                       os.path.join(directory, shard))
        else:
            from safetensors.numpy import save_file
            save_file(part, os.path.join(directory, shard), metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: s for s, keys in shards.items() for k in keys}}
    name = "pytorch_model.bin.index.json" if torch_format else "model.safetensors.index.json"
    with open(os.path.join(directory, name), "w") as f:
        json.dump(index, f)


def test_sharded_hf_checkpoints_import_like_unsharded(restored, tmp_path):
    """The imported CLIP in HF's layout as model.safetensors, as 2 safetensors shards and as 2
    .bin shards (+ the transformers index files): all read to the same tensors, which import
    to the run's params."""
    from vlmjax.interop.hf_export import hf_tensors
    from vlmjax.interop.hf_files import SAFETENSORS, read_tensors, write_tensors
    from vlmjax.interop.hf_import import map_tensors
    run = restored["clip_quickgelu"]
    tensors = hf_tensors(flat_tree(run), run.cfg)
    single = tmp_path / "single"
    single.mkdir()
    write_tensors(tensors, str(single / SAFETENSORS))
    reads = {"single": read_tensors(str(single))}
    for torch_format in (False, True):
        sharded = tmp_path / f"sharded_{'bin' if torch_format else 'safetensors'}"
        sharded.mkdir()
        _shard(str(sharded), tensors, torch_format)
        reads[sharded.name] = read_tensors(str(sharded))
    params = flat_params(run)
    for name, got in reads.items():
        assert got.keys() == tensors.keys(), name
        for key in tensors:
            np.testing.assert_array_equal(got[key], tensors[key], err_msg=f"{name} {key}")
    values = map_tensors(reads["sharded_safetensors"], run.cfg, VOCAB, "shards")
    assert values.keys() == params.keys()
    for key in params:
        np.testing.assert_array_equal(values[key], params[key], err_msg=key)
    os.remove(tmp_path / "sharded_safetensors" / "model-00002-of-00002.safetensors")
    with pytest.raises(CheckpointError, match=r"model-00002-of-00002\.safetensors does not exist"):
        read_tensors(str(tmp_path / "sharded_safetensors"))


def flat_tree(run) -> dict:
    """The run's params as a NumPy tree."""
    import jax
    return jax.tree.map(np.asarray, run.params)
