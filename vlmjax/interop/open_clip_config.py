"""An open_clip model-config JSON -> the vlmjax config of the same model (ViT or ResNet CLIP, or
CoCa).

The format is open_clip 3.3's: {"embed_dim", "quick_gelu", "vision_cfg", "text_cfg",
"multimodal_cfg" (CoCa), ...}, bare (open_clip's model_configs/<name>.json) or wrapped as in an
open_clip_config.json ({"model_cfg": ..., "preprocess_cfg": {"mean", "std", ...}}). Every key is
accounted for: read, known to leave the weights and the forward pass alone (patch dropout,
output_tokens, settings of towers that are not built), or required to keep open_clip's default
because its other values build something vlmjax does not have (timm / HF towers,
LayerScale, custom attention blocks, ...). Anything else is refused with the key named.
"""

import dataclasses
import logging
import math
from collections.abc import Mapping

import ml_collections

from vlmjax.config import select
from vlmjax.errors import CheckpointError
from vlmjax.interop.hf_clip_config import OPENAI_MEAN, OPENAI_STD
from vlmjax.interop.open_clip_resnet import resnet_image
from vlmjax.interop.workdir_writer import imported_config

log = logging.getLogger(__name__)

# Keys whose value must be one of these (open_clip's default first), and what other values build.
_BLOCK_OPTIONS = {k: ((False,), "a custom attention block (open_clip's CustomResidualAttentionBlock)")
                  for k in ("qk_norm", "scaled_cosine_attn", "scale_heads", "scale_attn_inner",
                            "scale_attn", "scale_fc")}
_COMMON_FIXED = {
    "ls_init_value": ((None,), "LayerScale"),
    "act_kwargs": ((None,), "activation options"),
    "norm_kwargs": ((None,), "LayerNorm options (vlmjax CLIP/CoCa LayerNorms use eps 1e-5)"),
    "block_type": ((None, "default"), "a custom attention block"),
    **_BLOCK_OPTIONS,
}
VISION_FIXED = {
    **_COMMON_FIXED,
    "timm_model_name": ((None,), "a timm image tower"),
    "pos_embed_type": (("learnable",), "fixed position embeddings"),
    "final_ln_after_pool": ((False,), "LayerNorm after pooling"),
    "pool_type": (("tok",), "pooling other than the class token"),
}
TEXT_FIXED = {
    **_COMMON_FIXED,
    "hf_model_name": ((None,), "a Hugging Face text tower"),
    "hf_tokenizer_name": ((None,), "a Hugging Face tokenizer (vlmjax converts CLIP BPE models)"),
    "tokenizer_mode": ((None,), "another tokenizer mode"),
    "tokenizer_kwargs": ((None, {}, {"clean": "lower"}), "another text clean-up"),
    "no_causal_mask": ((False,), "a bidirectional text tower"),
    "final_ln_after_pool": ((False,), "LayerNorm after pooling"),
    "proj_type": (("linear",), "another text projection"),
    "proj_bias": ((False,), "a text projection with bias"),
}
MULTIMODAL_FIXED = {"ls_init_value": ((None,), "LayerScale")}
# Keys read below, and keys that change neither the weights nor the forward pass.
VISION_READ = ("layers", "width", "head_width", "mlp_ratio", "patch_size", "image_size",
               "no_ln_pre", "attentional_pool", "attn_pooler_queries", "attn_pooler_heads")
VISION_INERT = ("patch_dropout", "output_tokens", "timm_model_pretrained", "timm_pool",
                "timm_proj", "timm_proj_bias", "timm_drop", "timm_drop_path")
TEXT_READ = ("context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio",
             "embed_cls", "pool_type", "eos_id", "pad_id")
TEXT_INERT = ("output_tokens", "hf_model_pretrained", "hf_proj_type", "hf_pooler_type")
MULTIMODAL_READ = ("width", "heads", "layers", "mlp_ratio")
# open_clip's MultimodalCfg extends its text config, but its decoder reads only the keys above.
MULTIMODAL_INERT = (*TEXT_READ, *TEXT_INERT, *(k for k in TEXT_FIXED if k != "ls_init_value"),
                    "dim_head", "n_queries", "attn_pooler_heads")
TOP_READ = ("embed_dim", "quick_gelu", "vision_cfg", "text_cfg", "multimodal_cfg", "custom_text",
            "init_logit_scale", "init_logit_bias", "nonscalar_logit_scale")
# open_clip 3.3's defaults of the keys read (CLIPVisionCfg, CLIPTextCfg, MultimodalCfg).
VISION_DEFAULTS = {"layers": 12, "width": 768, "head_width": 64, "mlp_ratio": 4.0,
                   "patch_size": 16, "image_size": 224, "no_ln_pre": False,
                   "attentional_pool": False, "attn_pooler_queries": 256, "attn_pooler_heads": 8}
TEXT_DEFAULTS = {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8,
                 "layers": 12, "mlp_ratio": 4.0, "embed_cls": False, "pool_type": "argmax",
                 "eos_id": 2, "pad_id": 0}
MULTIMODAL_DEFAULTS = {"width": 512, "heads": 8, "layers": 12, "mlp_ratio": 4}
CLIP_BPE_EOT = 49407  # the end-of-text id of CLIP BPE (the largest id)


@dataclasses.dataclass(frozen=True)
class OpenClipModel:
    """What the importer needs beyond the vlmjax config: the tensor layout's choices."""

    config: ml_collections.ConfigDict
    coca: bool
    vision_heads: int
    pooler_packed: bool  # open_clip's CoCa pooler stores in_proj_weight (kdim == d_model)
    resnet: bool = False  # a ModifiedResNet image tower (open_clip_resnet.py)


def _check_section(section: Mapping, where: str, read: tuple, inert: tuple, fixed: Mapping,
                   name: str) -> dict:
    """Refuses unknown keys and non-default architecture switches; returns read keys' values."""
    if not isinstance(section, Mapping):
        raise CheckpointError(f"{name}: {where.rstrip('.')} is {type(section).__name__}, not an "
                              "object; is this an open_clip model config?")
    for key, value in section.items():
        if key in fixed and value not in fixed[key][0]:
            raise CheckpointError(f"{name}: {where}{key}={value!r} builds {fixed[key][1]}, which "
                                  f"vlmjax does not convert; supported: {fixed[key][0][0]!r} "
                                  "(open_clip ViT CLIP and CoCa towers)")
        if key not in fixed and key not in read and key not in inert:
            raise CheckpointError(f"{name}: {where}{key} is not an open_clip 3.3 model-config "
                                  "key vlmjax knows; remove it or check the file")
    return dict(section)


def _square(value: object, key: str, name: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise CheckpointError(f"{name}: vision_cfg.{key}={list(value)} is not square; vlmjax "
                                  "ViTs take square images and patches")
        value = value[0]
    return int(value)


def _vision(cfg: Mapping, coca: bool, name: str, embed_dim: int) -> tuple[dict, dict]:
    """(vlmjax model.image settings, CoCa pooler settings) of vision_cfg."""
    v = {**VISION_DEFAULTS, **_check_section(cfg, "vision_cfg.", VISION_READ, VISION_INERT,
                                             VISION_FIXED, name)}
    if isinstance(v["layers"], (list, tuple)):  # a ModifiedResNet (RN50, RN101, ...)
        size = _square(v["image_size"], "image_size", name)
        return resnet_image(v, embed_dim, coca, name, size), {}
    if v["attentional_pool"] is not coca:
        why = ("open_clip's own CoCa pooler (attentional_pool=true) is what vlmjax's "
               "model.coca.pooler='open_clip' has" if coca else
               "a CLIP with an attentional pooler is not a vlmjax two-tower model")
        raise CheckpointError(f"{name}: vision_cfg.attentional_pool={v['attentional_pool']!r} "
                              f"is not supported ({why})")
    if v["width"] % v["head_width"]:
        raise CheckpointError(f"{name}: vision_cfg.width ({v['width']}) is not a multiple of "
                              f"vision_cfg.head_width ({v['head_width']})")
    image = dict(variant="", image_size=_square(v["image_size"], "image_size", name), channels=3,
                 patch_size=_square(v["patch_size"], "patch_size", name), width=int(v["width"]),
                 depth=int(v["layers"]), heads=int(v["width"] // v["head_width"]),
                 mlp_dim=int(v["width"] * v["mlp_ratio"]), pool="cls",
                 ln_pre=not v["no_ln_pre"])
    pooler = dict(caption_queries=int(v["attn_pooler_queries"]),
                  pooler_heads=int(v["attn_pooler_heads"]))
    return image, pooler


def _text(cfg: Mapping, coca: bool, name: str) -> dict:
    t = {**TEXT_DEFAULTS, **_check_section(cfg, "text_cfg.", TEXT_READ, TEXT_INERT, TEXT_FIXED,
                                           name)}
    if bool(t["embed_cls"]) != coca:
        raise CheckpointError(f"{name}: text_cfg.embed_cls={t['embed_cls']!r} is not supported "
                              f"for {'CoCa' if coca else 'CLIP'} (vlmjax's CoCa text tower "
                              "always appends a CLS token, its CLIP text tower never)")
    if coca and t["pad_id"] != 0:
        raise CheckpointError(f"{name}: text_cfg.pad_id={t['pad_id']} is not supported; the "
                              "CoCa CLS mask is imported for CLIP BPE's padding id 0")
    if not coca and not (t["pool_type"] == "argmax" or
                         (t["pool_type"] == "eos" and t["eos_id"] == CLIP_BPE_EOT)):
        raise CheckpointError(f"{name}: text_cfg.pool_type={t['pool_type']!r} (eos_id "
                              f"{t['eos_id']}) is not supported; vlmjax pools the end-of-text "
                              "token ('argmax', or 'eos' with eos_id 49407)")
    return t


def read_model_config(raw: Mapping, name: str) -> tuple[dict, dict]:
    """(model config, preprocess config) of an open_clip model-config JSON, bare or wrapped."""
    if "model_cfg" in raw:
        return dict(raw["model_cfg"]), dict(raw.get("preprocess_cfg") or {})
    if not all(k in raw for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise CheckpointError(f"{name} has none of model_cfg or embed_dim/vision_cfg/text_cfg; "
                              "give open_clip's model-config JSON (model_configs/<name>.json or "
                              "open_clip_config.json)")
    return dict(raw), {}


def image_stats(preprocess: Mapping, name: str) -> tuple[tuple, tuple]:
    """Image mean/std of the preprocess config, OpenAI's when it names none (as open_clip)."""
    if "mean" not in preprocess or "std" not in preprocess:
        log.warning("%s gives no preprocess_cfg mean/std: using OpenAI CLIP's", name)
    return (tuple(preprocess.get("mean", OPENAI_MEAN)), tuple(preprocess.get("std", OPENAI_STD)))


def vlmjax_config(raw: Mapping, name: str, tokenizer_kind: str = "clip_bpe",
                  tokenizer_path: str = "") -> OpenClipModel:
    """The vlmjax config of the open_clip model `raw` describes (parsed JSON named `name`)."""
    model, preprocess = read_model_config(raw, name)
    for key in model:
        if key not in TOP_READ:
            raise CheckpointError(f"{name}: {key} is not an open_clip 3.3 model-config key "
                                  "vlmjax knows; remove it or check the file")
    coca = "multimodal_cfg" in model
    image, pooler = _vision(model["vision_cfg"], coca, name, int(model["embed_dim"]))
    text = _text(model["text_cfg"], coca, name)
    mean, std = image_stats(preprocess, name)
    c = imported_config(tokenizer_kind, tokenizer_path, text["context_length"],
                        text["vocab_size"], mean, std)
    c.model.activation = "quick_gelu" if model.get("quick_gelu", False) else "gelu"
    c.model.embed_dim = int(model["embed_dim"])
    c.model.logit_scale_init = float(model.get("init_logit_scale", math.log(1 / 0.07)))
    if model.get("init_logit_bias") is not None:  # open_clip's SigLIP-style models
        c.model.use_logit_bias = True
        c.model.logit_bias_init = float(model["init_logit_bias"])
        c.objective.name = "siglip"
    if image.get("kind") == "resnet":
        select(c, "model.image.kind", "resnet")
    c.model.image.update(image)
    width, heads = int(text["width"]), int(text["heads"])
    c.model.text.update(width=width, depth=int(text["layers"]), heads=heads,
                        mlp_dim=int(width * text["mlp_ratio"]))
    if coca:
        _coca(c, model["multimodal_cfg"], pooler, name)
    resnet = image.get("kind") == "resnet"
    return OpenClipModel(config=c, coca=coca, vision_heads=0 if resnet else image["heads"],
                         pooler_packed=image["width"] == c.model.embed_dim, resnet=resnet)


def _coca(c: ml_collections.ConfigDict, cfg: Mapping, pooler: dict, name: str) -> None:
    """Sets model.coca.* (open_clip's layout) from multimodal_cfg, which must match the text."""
    m = {**MULTIMODAL_DEFAULTS, **_check_section(cfg, "multimodal_cfg.", MULTIMODAL_READ,
                                                 MULTIMODAL_INERT, MULTIMODAL_FIXED, name)}
    text = c.model.text
    for key, ours, want in (("width", "model.text.width", text.width),
                            ("heads", "model.text.heads", text.heads),
                            ("mlp_ratio", "model.text.mlp_dim", text.mlp_dim)):
        value = int(m["width"] * m["mlp_ratio"]) if key == "mlp_ratio" else m[key]
        if value != want:
            raise CheckpointError(f"{name}: multimodal_cfg.{key}={m[key]} gives a decoder that "
                                  f"differs from the text tower ({ours}={want}); vlmjax's CoCa "
                                  "decoder shares the text tower's width, heads and MLP size")
    if c.model.embed_dim != text.width:
        raise CheckpointError(f"{name}: embed_dim={c.model.embed_dim} differs from "
                              f"text_cfg.width={text.width}; open_clip's CoCa pooler has width "
                              "embed_dim and vlmjax's the text width, so they must be equal")
    if c.model.use_logit_bias:
        raise CheckpointError(f"{name}: init_logit_bias is not supported for CoCa (vlmjax's CoCa "
                              "has no logit bias)")
    select(c, "model.name", "coca")
    select(c, "objective.name", "coca")  # contrastive + captioning (weights 1 and 2, as open_clip's)
    c.model.text.update(pool="cls", cls_mask="open_clip")  # the unimodal tower, appended CLS
    c.model.coca.update(pooler="open_clip", decoder_block="open_clip",
                        multimodal_depth=int(m["layers"]), **pooler)
