"""Checks a config before anything compiles: unknown keys, wrong types, impossible values.

Every failure is a `ConfigError` whose one-line message names the key and the fix.
"""

import difflib
import math
import os
from collections.abc import Mapping
from typing import Any

import ml_collections

from vlmjax.config.defaults import PER_CHANNEL_KEYS, base_config
from vlmjax.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")
CHOICES = {
    "model.name": ("two_tower", "coca", "filip"),
    "model.activation": ("gelu", "quick_gelu", "gelu_tanh"),
    "model.dtype": ("float32", "bfloat16"),
    "model.remat": ("none", "full", "dots", "dots_no_batch"),
    "model.image.pool": ("cls", "gap", "map"),
    "model.image.proj": ("linear", "linear_bias", "none"),
    "model.text.pool": ("eot", "last"),
    "model.text.proj": ("linear", "linear_bias", "none"),
    "model.coca.pooler": ("paper", "open_clip"),
    "model.coca.decoder_block": ("paper", "open_clip"),
    "model.coca.cls_mask": ("real_tokens", "open_clip"),
    "optimizer.schedule": ("cosine", "constant"),
    "train.locked_tower": ("", "image", "text"),
}
POSITIVE_INTS = (
    "tokenizer.context_length",
    "model.embed_dim",
    "model.image.image_size",
    "model.image.channels",
    "model.image.patch_size",
    "model.text.width",
    "model.text.depth",
    "model.text.heads",
    "model.text.mlp_dim",
    "model.coca.caption_queries",
    "model.coca.pooler_heads",
    "model.coca.unimodal_depth",
    "model.coca.multimodal_depth",
    "train.batch_size",
    "train.grad_accum_steps",
    "train.num_steps",
    "train.log_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.max_consecutive_skips",
    "data.prefetch",
)
NON_NEGATIVE_INTS = ("optimizer.warmup_steps", "train.eval_every", "data.translate", "data.num_threads")


def _fail(key: str, problem: str, fix: str) -> None:
    separator = "" if problem.startswith("=") else " "
    raise ConfigError(f"config.{key}{separator}{problem}; {fix}")


def _type_ok(value: Any, default: Any) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, (tuple, list)):
        return isinstance(value, (tuple, list))
    return True


# Sections whose keys may be left out (the registry entry's defaults fill them in).
PARTIAL_SECTIONS = ("objective", "evals")


def check_against_schema(cfg: Mapping, schema: Mapping, prefix: str = "") -> None:
    """Raises on keys absent from `schema`, keys of `schema` absent from `cfg` (outside
    PARTIAL_SECTIONS) and leaves whose type differs from the default's."""
    if not prefix.startswith(tuple(f"{s}." for s in PARTIAL_SECTIONS)):
        for key in schema:
            if key not in cfg:
                _fail(f"{prefix}{key}", "is missing", "start the config from "
                      "vlmjax.config.base_config(), which has every key with its default")
    for key in cfg:
        path = f"{prefix}{key}"
        if key not in schema:
            close = difflib.get_close_matches(key, list(schema.keys()), n=1)
            hint = f"did you mean config.{prefix}{close[0]}?" if close else (
                f"known keys here: {', '.join(sorted(schema.keys()))}")
            _fail(path, "is not a known key", hint)
        value, default = cfg[key], schema[key]
        if isinstance(default, Mapping):
            if not isinstance(value, Mapping):
                _fail(path, f"must be a section (ConfigDict), got {type(value).__name__}",
                      "set its sub-keys instead, e.g. " + f"--config.{path}.<key>=...")
            check_against_schema(value, default, prefix=path + ".")
        elif path in PER_CHANNEL_KEYS and isinstance(value, (list, tuple)):
            if not value or not all(_type_ok(v, 0.0) for v in value):
                _fail(path, f"={value!r} must be a float or a list of floats (one per channel)",
                      f"e.g. --config.{path}=0.5 or --config.{path}=(0.48,0.46,0.41)")
        elif not _type_ok(value, default):
            _fail(path, f"has type {type(value).__name__} ({value!r}) but must be "
                  f"{type(default).__name__}", f"e.g. --config.{path}={default!r}")


def _get(cfg: Mapping, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = cfg[part]
    return cfg


def resolve_mesh_shape(mesh_cfg: Mapping, num_devices: int) -> dict[str, int]:
    """Mesh axis sizes with the single -1 replaced by the remaining devices."""
    sizes = {axis: int(mesh_cfg[axis]) for axis in MESH_AXES}
    free = [a for a, s in sizes.items() if s == -1]
    if len(free) > 1:
        _fail("mesh", f"has -1 on several axes ({', '.join(free)})", "use -1 on at most one axis")
    for axis, size in sizes.items():
        if size == 0 or size < -1:
            _fail(f"mesh.{axis}", f"is {size}", "use a positive size or -1 for the rest")
    fixed = 1
    for size in sizes.values():
        fixed *= size if size > 0 else 1
    if free:
        if num_devices % fixed:
            _fail("mesh", f"fixed axes multiply to {fixed}, which does not divide the "
                  f"{num_devices} devices", "pick sizes whose product divides the device count")
        sizes[free[0]] = num_devices // fixed
    elif fixed != num_devices:
        _fail("mesh", f"sizes multiply to {fixed} but there are {num_devices} devices",
              "make the product equal the device count, or set one axis to -1")
    return sizes


def _check_channel_stats(cfg: Mapping) -> None:
    """image_mean/std: a float, or one value per image channel; std positive."""
    channels = cfg["model"]["image"]["channels"]
    for key in PER_CHANNEL_KEYS:
        value = _get(cfg, key)
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if len(values) not in (1, channels):
            _fail(key, f"has {len(values)} values but model.image.channels={channels}",
                  f"give one value or {channels}")
        if key.endswith("std") and min(values) <= 0:
            _fail(key, "must be positive", "use the dataset's pixel std, e.g. 0.5")


# Two-tower-only architecture keys (big_vision SigLIP) and the value CoCa and FILIP need.
TWO_TOWER_ONLY = (("model.norm_eps", 1e-5), ("model.text.causal", True), ("model.text.pool", "eot"),
                  ("model.image.proj", "linear"), ("model.text.proj", "linear"))


def _check_two_tower_heads(cfg: Mapping, image_width: int) -> None:
    """norm_eps positive; proj='none' only where the tower width is the joint width; the
    big_vision options only for model.name='two_tower'."""
    model = cfg["model"]
    if not model["norm_eps"] > 0:
        _fail("model.norm_eps", f"is {model['norm_eps']}", "use a positive epsilon, e.g. 1e-5")
    for tower, width in (("image", image_width), ("text", model["text"]["width"])):
        if model[tower]["proj"] == "none" and width != model["embed_dim"]:
            _fail(f"model.{tower}.proj", f"='none' needs model.embed_dim ({model['embed_dim']}) "
                  f"== the {tower} width ({width})", "use 'linear' or set embed_dim to the width")
    if model["name"] != "two_tower":
        for key, want in TWO_TOWER_ONLY:
            if _get(cfg, key) != want:
                _fail(key, f"={_get(cfg, key)!r} is only supported by model.name='two_tower'",
                      f"leave it at {want!r} for {model['name']}")


def _check_coca(model: Mapping) -> None:
    """CoCa-only constraints: pooler heads, pooler layout, ViT pooling, no logit bias."""
    coca, heads = model["coca"], model["coca"]["pooler_heads"]
    dims = {"model.text.width": model["text"]["width"]}
    if coca["pooler"] == "paper":
        dims["model.embed_dim"] = model["embed_dim"]
    for key, dim in dims.items():
        if dim % heads:
            _fail("model.coca.pooler_heads", f"({heads}) does not divide {key} ({dim})",
                  "pick pooler heads that divide it")
    if coca["pooler"] == "open_clip" and coca["caption_queries"] < 2:
        _fail("model.coca.caption_queries", "must be at least 2 with pooler='open_clip'",
              "query 0 is the contrastive embedding, the rest feed the decoder (open_clip: 256)")
    if model["image"]["pool"] not in ("cls", "gap"):
        _fail("model.image.pool", f"={model['image']['pool']!r} is unused by CoCa",
              "use 'gap' (patch tokens only) or 'cls' (class token pooled too)")
    if model["use_logit_bias"]:
        _fail("model.use_logit_bias", "is not supported by CoCa", "set it to False")


def _check_filip(model: Mapping) -> None:
    """FILIP reads patch tokens (no MAP head) and has no logit bias."""
    if model["image"]["pool"] == "map":
        _fail("model.image.pool", "='map' is unused by FILIP (it scores patch tokens)",
              "use 'gap' or 'cls'")
    if model["use_logit_bias"]:
        _fail("model.use_logit_bias", "is not supported by FILIP", "set it to False")


def validate(config: ml_collections.ConfigDict, num_devices: int, process_count: int = 1) -> None:
    """Raises ConfigError on the first problem found; returns None when the config is usable."""
    from vlmjax.data.datasets import DATASETS, check_dataset
    from vlmjax.data.eval_sources import check_eval_dataset, eval_prompts
    from vlmjax.data.image_text_config import IMAGE_TEXT, check_image_text_config
    from vlmjax.evaluators.registry import evaluator_schema
    from vlmjax.evaluators.transfer_setup import TRANSFER_KINDS, check_transfer_config
    from vlmjax.models.sizes import resolve_vit
    from vlmjax.objectives.registry import get_objective, objective_schema
    from vlmjax.tokenizers import KINDS as TOKENIZER_KINDS

    schema = base_config().to_dict()
    cfg = config.to_dict()
    # Polymorphic sections: their schema depends on the registry entry they name.
    for section in PARTIAL_SECTIONS:
        if not isinstance(cfg.get(section, {}), Mapping):
            _fail(section, f"must be a section (ConfigDict), got {type(cfg[section]).__name__}",
                  f"set its sub-keys instead, e.g. --config.{section}.<key>=...")
    name = cfg.get("objective", {}).get("name")
    if not isinstance(name, str):
        _fail("objective.name", f"is {name!r}", "name a registered objective, e.g. "
              "--config.objective.name=clip")
    schema["objective"] = objective_schema(name)
    schema["evals"] = {}
    for eval_name, eval_cfg in cfg.get("evals", {}).items():
        if not isinstance(eval_cfg, Mapping) or not isinstance(eval_cfg.get("kind"), str):
            _fail(f"evals.{eval_name}", "has no `kind` (a string)", "set e.g. "
                  f"--config.evals.{eval_name}.kind=zeroshot")
        schema["evals"][eval_name] = evaluator_schema(eval_name, eval_cfg["kind"])
    check_against_schema(cfg, schema)

    for key, options in CHOICES.items():
        if _get(cfg, key) not in options:
            _fail(key, f"is {_get(cfg, key)!r}", f"choose one of {', '.join(map(repr, options))}")
    if cfg["tokenizer"]["kind"] not in TOKENIZER_KINDS:
        _fail("tokenizer.kind", f"is {cfg['tokenizer']['kind']!r}",
              f"choose one of {', '.join(TOKENIZER_KINDS)}")
    for key in POSITIVE_INTS:
        if _get(cfg, key) <= 0:
            _fail(key, f"is {_get(cfg, key)}", "it must be a positive integer")
    for key in NON_NEGATIVE_INTS:
        if _get(cfg, key) < 0:
            _fail(key, f"is {_get(cfg, key)}", "it must be >= 0")
    opt = cfg["optimizer"]
    if not opt["lr"] > 0:
        _fail("optimizer.lr", f"is {opt['lr']}", "use a positive learning rate")
    if not 0 <= cfg["train"]["time_limit_seconds"] < math.inf:
        _fail("train.time_limit_seconds", f"is {cfg['train']['time_limit_seconds']}",
              "use a number of seconds >= 0 (0: no limit)")
    if opt["warmup_steps"] >= cfg["train"]["num_steps"]:
        _fail("optimizer.warmup_steps", f"({opt['warmup_steps']}) is not below "
              f"train.num_steps ({cfg['train']['num_steps']})", "shorten the warmup")
    if not 0 <= opt["b1"] < 1 or not 0 <= opt["b2"] < 1:
        _fail("optimizer.b1", "and b2 must lie in [0, 1)", "use e.g. b1=0.9, b2=0.98")
    if cfg["model"]["max_logit_scale"] <= 0:
        _fail("model.max_logit_scale", "must be positive", "the CLIP default is 100")
    _check_channel_stats(cfg)
    if cfg["tokenizer"]["context_length"] < 2:
        _fail("tokenizer.context_length", "must be at least 2", "CLIP uses 77")

    image = cfg["model"]["image"]
    resolved = resolve_vit(image)  # raises on unknown variants or missing sizes
    if image["image_size"] % resolved["patch_size"]:
        _fail("model.image.image_size", f"({image['image_size']}) is not a multiple of the "
              f"patch size ({resolved['patch_size']})", "use a multiple of the patch size")
    if resolved["width"] % resolved["heads"]:
        _fail("model.image.heads", f"({resolved['heads']}) does not divide the width "
              f"({resolved['width']})", "pick heads that divide the width")
    text = cfg["model"]["text"]
    if text["width"] % text["heads"]:
        _fail("model.text.heads", f"({text['heads']}) does not divide model.text.width "
              f"({text['width']})", "pick heads that divide the width")

    _check_two_tower_heads(cfg, resolved["width"])
    if cfg["model"]["name"] == "coca":
        _check_coca(cfg["model"])
    if cfg["model"]["name"] == "filip":
        _check_filip(cfg["model"])

    sizes = resolve_mesh_shape(cfg["mesh"], num_devices)
    batch_shards = sizes["data"] * sizes["fsdp"]
    batch = cfg["train"]["batch_size"]
    for divisor, what in ((batch_shards, f"{batch_shards} batch shards (mesh data x fsdp)"),
                          (process_count, f"{process_count} processes")):
        if batch % divisor:
            _fail("train.batch_size", f"={batch} does not divide evenly over {what}",
                  f"use a multiple of {divisor}, e.g. --config.train.batch_size="
                  f"{(batch // divisor + 1) * divisor}")
    accum = cfg["train"]["grad_accum_steps"]
    if accum > 1 and batch % (accum * batch_shards):
        _fail("train.batch_size", f"={batch} does not split into {accum} micro-batches "
              f"(train.grad_accum_steps) that each divide over {batch_shards} batch shards",
              f"use a multiple of {accum * batch_shards} or change train.grad_accum_steps")
    from vlmjax.evaluators.scoring import TOKEN_DIRECTIONS
    for eval_name, eval_cfg in cfg["evals"].items():
        direction = eval_cfg.get("token_direction", "i2t")
        if direction not in TOKEN_DIRECTIONS:
            _fail(f"evals.{eval_name}.token_direction", f"is {direction!r}",
                  f"choose one of {', '.join(map(repr, TOKEN_DIRECTIONS))}")
        if eval_cfg["kind"] == "retrieval" and eval_cfg.get("relevance", "pair") not in ("pair", "class"):
            _fail(f"evals.{eval_name}.relevance", f"is {eval_cfg['relevance']!r}",
                  "choose 'pair' (own captions) or 'class' (captions of the same class)")
        if "batch_size" in eval_cfg and eval_cfg["batch_size"] % batch_shards:
            _fail(f"evals.{eval_name}.batch_size", f"={eval_cfg['batch_size']} does not divide "
                  f"over {batch_shards} batch shards", f"use a multiple of {batch_shards}")
    tok = cfg["tokenizer"]
    # clip_bpe with an empty path uses the vocabulary bundled with an installed open_clip.
    needs_file = not tok["kind"].startswith("trained_") and (tok["path"] or tok["kind"] != "clip_bpe")
    if needs_file and not os.path.exists(tok["path"]):
        _fail("tokenizer.path", f"({tok['path']!r}) does not exist but tokenizer.kind="
              f"{tok['kind']!r} reads its vocabulary from it", "point it at the tokenizer files")
    objective = get_objective(cfg["objective"]["name"])
    if cfg["model"]["name"] not in objective.models:
        _fail("objective.name", f"={objective.name!r} does not work with model "
              f"{cfg['model']['name']!r}", f"use a model among {', '.join(objective.models)}")
    objective.check(cfg)
    if cfg["data"]["name"] == IMAGE_TEXT:
        check_image_text_config(cfg)
    else:
        check_dataset(cfg["data"]["name"], cfg["data"]["dir"], key="data.dir", split=cfg["data"]["split"])
    for eval_name, eval_cfg in cfg["evals"].items():
        full = {**evaluator_schema(eval_name, eval_cfg["kind"]), **eval_cfg}
        if "dataset" not in full:
            continue
        key = f"evals.{eval_name}.data_dir" if full.get("data_dir") else "data.dir"
        if eval_cfg["kind"] == "zeroshot":  # on-disk datasets and TFDS benchmarks
            on_disk = full["dataset"] in DATASETS
            data_dir = full["data_dir"] or (cfg["data"]["dir"] if on_disk else "")
            check_eval_dataset(full["dataset"], full["split"], data_dir, key, full["split_file"])
            eval_prompts(full["dataset"], full["classnames_file"], full["templates_file"],
                         full["split_file"])
        elif eval_cfg["kind"] in TRANSFER_KINDS:
            check_transfer_config(eval_name, full, cfg, batch_shards)
        elif eval_cfg["kind"] == "retrieval" and full["dataset"] not in DATASETS:
            from vlmjax.data.karpathy_retrieval import open_retrieval_split
            open_retrieval_split(full["dataset"], full["split"], full["data_dir"])
        else:
            check_dataset(full["dataset"], full.get("data_dir") or cfg["data"]["dir"], key=key,
                          split=full.get("split"))
