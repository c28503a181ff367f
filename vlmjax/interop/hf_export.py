"""`--to hf`: a vlmjax CLIP run -> a directory `transformers.CLIPModel.from_pretrained` loads.

Refuses what HF CLIP cannot represent, naming the setting: other model families, pooling other
than the class token, no ln_pre, a logit bias, a non-zero patch bias, a non-CLIP-BPE tokenizer,
and the big_vision options (norm_eps, gelu_tanh, bidirectional text, last pooling, biased heads).
"""

import json
import os
import shutil
from collections.abc import Mapping

import jax
import numpy as np

from vlmjax.errors import CheckpointError, ConfigError
from vlmjax.interop import hf_clip_layout as layout
from vlmjax.interop import hf_files
from vlmjax.interop.hf_clip_config import hf_config
from vlmjax.interop.torch_layout import to_torch
from vlmjax.tokenizers.base import read_spec
from vlmjax.tokenizers.clip_bpe import EOT, SOT

# (config path, value HF CLIP needs, why)
REQUIRED = (
    ("model.name", "two_tower", "HF CLIPModel is a two-tower model"),
    ("model.image.pool", "cls", "HF CLIP pools the class token"),
    ("model.image.ln_pre", True, "HF CLIP always applies pre_layrnorm"),
    ("model.use_logit_bias", False, "HF CLIPModel has no logit bias (SigLIP does)"),
    ("model.norm_eps", 1e-5, "HF CLIP's LayerNorms use layer_norm_eps 1e-5 here"),
    ("model.text.causal", True, "HF CLIP's text attention is causal"),
    ("model.text.pool", "eot", "HF CLIP pools the end-of-text token"),
    ("model.image.proj", "linear", "HF CLIP's visual_projection is a bias-free matrix"),
    ("model.text.proj", "linear", "HF CLIP's text_projection is a bias-free matrix"),
)
HF_ACTIVATIONS = ("gelu", "quick_gelu")


def check_exportable(cfg: Mapping) -> None:
    """Raises ConfigError naming the first setting HF CLIP cannot represent."""
    for key, want, why in REQUIRED:
        value = cfg
        for part in key.split("."):
            value = value[part]
        if value != want:
            raise ConfigError(f"config.{key}={value!r} cannot be exported to HF CLIP ({why}); "
                              f"only models with {key}={want!r} convert")
    if cfg["model"]["activation"] not in HF_ACTIVATIONS:
        raise ConfigError(f"config.model.activation={cfg['model']['activation']!r} cannot be "
                          f"exported to HF CLIP; only {', '.join(HF_ACTIVATIONS)} convert")


def _flat(params: Mapping) -> dict[str, np.ndarray]:
    from vlmjax.models.stacked import unstack_layer_params
    from vlmjax.train.param_groups import path_string
    leaves = jax.tree_util.tree_flatten_with_path(unstack_layer_params(params))[0]
    return {path_string(p): np.asarray(x, np.float32) for p, x in leaves}


def hf_tensors(params: Mapping, cfg: Mapping) -> dict[str, np.ndarray]:
    """HF CLIPModel state dict (NumPy) of vlmjax two-tower params."""
    from vlmjax.models.sizes import resolve_vit
    flat = _flat(params)
    for path in layout.ZERO_ONLY:
        if np.any(flat.pop(path) != 0):
            raise ConfigError(f"parameter {path} is not zero; HF CLIP's patch embedding has no "
                              "bias, so this model cannot be exported exactly")
    image, text = resolve_vit(cfg["model"]["image"]), cfg["model"]["text"]
    entries = layout.clip_entries(image["depth"], image["heads"], text["depth"], text["heads"])
    out = {e.key: to_torch(flat.pop(e.ours), e) for e in entries}
    if flat:
        raise ConfigError(f"parameter {sorted(flat)[0]} has no HF CLIP counterpart; "
                          "this model cannot be exported")
    return out


def _tokenizer_files(tok_dir: str, output: str) -> dict:
    """Writes vocab.json + merges.txt into output; returns the vocabulary."""
    spec = read_spec(tok_dir)
    if spec.get("source") not in ("clip_bpe",) or spec["kind"] != "hf_json":
        raise ConfigError(f"the run's tokenizer ({tok_dir}) is {spec.get('source', spec['kind'])!r};"
                          " HF CLIPTokenizer needs CLIP BPE (config.tokenizer.kind='clip_bpe')")
    if all(os.path.isfile(os.path.join(tok_dir, f)) for f in hf_files.TOKENIZER_FILES):
        for name in hf_files.TOKENIZER_FILES:
            shutil.copyfile(os.path.join(tok_dir, name), os.path.join(output, name))
        with open(os.path.join(tok_dir, "vocab.json"), encoding="utf-8") as f:
            return json.load(f)
    with open(os.path.join(tok_dir, spec["file"]), encoding="utf-8") as f:
        model = json.load(f)["model"]
    vocab = model["vocab"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    with open(os.path.join(output, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(output, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    return vocab


def _write_json(output: str, name: str, content: dict) -> None:
    with open(os.path.join(output, name), "w", encoding="utf-8") as f:
        json.dump(content, f, indent=2)


def export_hf(workdir: str, output: str, step: int | None = None) -> None:
    """Writes the run's checkpoint `step` (latest if None) as a HF CLIPModel directory."""
    from vlmjax.parallel.mesh import make_mesh
    from vlmjax.train.checkpoint import Checkpointer
    from vlmjax.train.state import state_layout
    from vlmjax.train.workdir import load_saved_config, tokenizer_for_run

    cfg = load_saved_config(workdir).to_dict()
    check_exportable(cfg)
    os.makedirs(output, exist_ok=True)
    vocab = _tokenizer_files(os.path.join(workdir, "tokenizer"), output)
    tokenizer = tokenizer_for_run(cfg, workdir)
    ctx = cfg["tokenizer"]["context_length"]
    with Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True) as ckpt:
        layout_ = state_layout(cfg, tokenizer.vocab_size, ctx, make_mesh(cfg["mesh"]))
        state, _, step = ckpt.restore(step, layout_.abstract)
    if SOT not in vocab or EOT not in vocab:
        raise CheckpointError(f"the run's vocabulary lacks {SOT} or {EOT}; not a CLIP BPE vocab")
    hf_files.write_tensors(hf_tensors(jax.device_get(state["params"]), cfg),
                           os.path.join(output, hf_files.SAFETENSORS))
    _write_json(output, "config.json", hf_config(cfg, tokenizer.vocab_size, vocab[SOT], vocab[EOT]))
    specials = {"bos_token": SOT, "eos_token": EOT, "unk_token": EOT, "pad_token": EOT}
    _write_json(output, "special_tokens_map.json", specials)
    _write_json(output, "tokenizer_config.json", {
        "tokenizer_class": "CLIPTokenizer", "model_max_length": ctx, **specials})
    size = cfg["model"]["image"]["image_size"]
    data = cfg["data"]
    channels = cfg["model"]["image"]["channels"]
    stats = {k: list(v) if isinstance(v, (list, tuple)) else [v] * channels
             for k, v in (("image_mean", data["image_mean"]), ("image_std", data["image_std"]))}
    _write_json(output, "preprocessor_config.json", {
        "image_processor_type": "CLIPImageProcessor", "do_resize": True,
        "size": {"shortest_edge": size}, "do_center_crop": True,
        "crop_size": {"height": size, "width": size}, "resample": 3, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, **stats})
