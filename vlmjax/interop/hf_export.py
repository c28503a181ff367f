"""`--to hf`: a vlmjax CLIP run -> a directory `transformers.CLIPModel.from_pretrained` and
`CLIPProcessor.from_pretrained` load.

Refuses what HF CLIP cannot represent, naming the setting: other model families, pooling other
than the class token, no ln_pre, a logit bias, a tokenizer CLIPTokenizer does not reproduce, and
the big_vision options (norm_eps, gelu_tanh, bidirectional text, last pooling, biased heads).
The patch bias, which HF lacks, is folded into the patch position embeddings (exact).
Every check runs before the output is kept: files go to a hidden sibling directory that is
renamed to --output at the end, so a refusal or a failure never leaves a half-written one.
"""

import dataclasses
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from vlmjax.errors import ConfigError
from vlmjax.interop import hf_clip_layout as layout
from vlmjax.interop import hf_files
from vlmjax.interop import hf_tokenizer_export as tokenizer_export
from vlmjax.interop.hf_clip_config import hf_config
from vlmjax.interop.torch_layout import to_torch
from vlmjax.models.registry import get_family
from vlmjax.models.sizes import resolve_vit
from vlmjax.tokenizers import Tokenizer
from vlmjax.train.run import flat_params, load_run, load_saved_config

log = logging.getLogger(__name__)

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


def hf_tensors(params: Mapping, cfg: Mapping) -> dict[str, np.ndarray]:
    """HF CLIPModel state dict (NumPy) of vlmjax two-tower params (class-token pooling)."""
    flat = flat_params(params)
    patch_bias = flat.pop(layout.PATCH_BIAS)
    image, text = resolve_vit(cfg["model"]["image"]), cfg["model"]["text"]
    entries = layout.clip_entries(image["depth"], image["heads"], text["depth"], text["heads"])
    out = {e.key: to_torch(flat.pop(e.ours), e) for e in entries}
    if flat:
        raise ConfigError(f"parameter {sorted(flat)[0]} has no HF CLIP counterpart; "
                          "this model cannot be exported")
    out[layout.POSITION_KEY] = layout.fold_patch_bias(out[layout.POSITION_KEY], patch_bias)
    return out


def preprocessor_config(cfg: Mapping) -> dict:
    """preprocessor_config.json: CLIPImageProcessor resizing, cropping and normalising as vlmjax
    evaluates (bicubic shorter side, centre crop, (x / 255 - mean) / std per channel).

    Models of other than 3 channels keep the image's own channels (do_convert_rgb false), so a
    1-channel model is given grayscale ("L") images.
    """
    size, channels = cfg["model"]["image"]["image_size"], cfg["model"]["image"]["channels"]
    stats = {}
    for name in ("image_mean", "image_std"):
        value = cfg["data"][name]
        value = list(value) if isinstance(value, (list, tuple)) else [value] * channels
        if len(value) != channels:
            raise ConfigError(f"config.data.{name} has {len(value)} values for a "
                              f"{channels}-channel model; give one per channel")
        stats[name] = [float(v) for v in value]
    return {"image_processor_type": "CLIPImageProcessor", "do_resize": True,
            "size": {"shortest_edge": size}, "do_center_crop": True,
            "crop_size": {"height": size, "width": size}, "resample": 3, "do_rescale": True,
            "rescale_factor": 1 / 255, "do_normalize": True, "do_convert_rgb": channels == 3,
            **stats}


@dataclasses.dataclass
class LoadedRun:
    cfg: dict
    tokenizer: Tokenizer
    tokenizer_dir: str
    params: Any  # the parameter tree of the restored checkpoint, on the host
    step: int


def load_for_export(workdir: str, step: int | None,
             check: Callable[[dict, str], None] | None = None) -> LoadedRun:
    """The run's config, stored tokenizer and checkpoint `step` (latest if None), read-only;
    `check(config, tokenizer directory)` runs first, so refusals come before the restore.

    """
    cfg = load_saved_config(workdir).to_dict()
    tok_dir = os.path.join(workdir, "tokenizer")
    if check is not None:
        check(cfg, tok_dir)
    run = load_run(workdir, step, config=cfg, devices=jax.devices()[:1])
    return LoadedRun(cfg, run.tokenizer, tok_dir, jax.device_get(run.params), run.step)


def exported(cfg: dict, params: Any = None) -> tuple[dict, Any]:
    """The config and parameters written for a run: its family's export view (a distilled run
    exports its student) or the run itself."""
    view = get_family(cfg["model"]).export_view
    return view(cfg, params) if view is not None else (cfg, params)


def _check_run(cfg: dict, tok_dir: str) -> None:
    check_exportable(exported(cfg)[0])
    tokenizer_export.clip_bpe_files(tok_dir)


def _check_output(output: str) -> None:
    if os.path.exists(output) and (not os.path.isdir(output) or os.listdir(output)):
        raise ConfigError(f"--output {output} already exists and is not an empty directory; "
                          "give a new directory (export never overwrites files)")


def _write_json(directory: str, name: str, content: dict) -> None:
    with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
        json.dump(content, f, indent=2)


def export_hf(workdir: str, output: str, step: int | None = None) -> None:
    """Writes the run's checkpoint `step` (latest if None) as a HF CLIPModel directory."""
    output = os.path.abspath(output)
    _check_output(output)
    run = load_for_export(workdir, step, _check_run)
    cfg, params = exported(run.cfg, run.params)
    ctx = cfg["tokenizer"]["context_length"]
    vocab, merges = tokenizer_export.clip_bpe_files(run.tokenizer_dir)
    if len(vocab) != run.tokenizer.vocab_size:
        raise ConfigError(f"the run's tokenizer has {run.tokenizer.vocab_size} ids but its BPE "
                          f"vocabulary {len(vocab)}; it cannot be written as vocab.json")
    tensors = hf_tensors(params, cfg)
    config = hf_config(cfg, run.tokenizer.vocab_size, vocab[tokenizer_export.SOT],
                       vocab[tokenizer_export.EOT])
    preprocessor = preprocessor_config(cfg)
    parent = os.path.dirname(output)
    os.makedirs(parent, exist_ok=True)
    staging = os.path.join(parent, f".{os.path.basename(output)}.partial-{uuid.uuid4().hex[:8]}")
    os.mkdir(staging)
    try:
        hf_files.write_tensors(tensors, os.path.join(staging, hf_files.SAFETENSORS))
        _write_json(staging, "config.json", config)
        _write_json(staging, "preprocessor_config.json", preprocessor)
        tokenizer_export.write_clip_bpe(vocab, merges, ctx, staging)
        tokenizer_export.verify_ids(staging, run.tokenizer, ctx, run.tokenizer_dir)
        _check_output(output)  # nothing appeared there meanwhile
        os.replace(staging, output)  # replaces an empty directory, never a non-empty one
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("exported step %d of %s -> %s", run.step, workdir, output)
