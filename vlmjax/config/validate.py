"""Checks a config before anything compiles: unknown keys, wrong types, impossible values.

This module knows the schema (`config.schema`), the types and the sections that belong to no
component (mesh, optimizer, train); every component section is dispatched to the component's
own check through its registry. Every failure is a `ConfigError` (or a `DataError` for data that
cannot be read) whose one-line message names the key and the fix.
"""

import difflib
import math
from collections.abc import Mapping
from typing import Any

import ml_collections

from vlmjax.config.schema import complete, schema_of
from vlmjax.data.registry import PER_CHANNEL_KEYS, check_data
from vlmjax.evaluators.registry import EvalFacts, check_evals
from vlmjax.models.registry import check_model, get_family
from vlmjax.objectives.registry import OBJECTIVES, get_objective
from vlmjax.options import fail, require_choice, require_non_negative, require_positive
from vlmjax.parallel.mesh import resolve_mesh_shape
from vlmjax.tokenizers.registry import check_tokenizer

SCHEDULES = ("cosine", "constant")


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


def check_against_schema(cfg: Mapping, schema: Mapping, prefix: str = "") -> None:
    """Raises on keys absent from `schema`, keys of `schema` absent from `cfg` and leaves whose
    type differs from the default's."""
    for key in schema:
        if key not in cfg:
            fail(f"{prefix}{key}", "is missing", "start the config from "
                 "vlmjax.config.base_config(), which has every key with its default")
    for key in cfg:
        path = f"{prefix}{key}"
        if key not in schema:
            close = difflib.get_close_matches(key, list(schema.keys()), n=1)
            hint = f"did you mean config.{prefix}{close[0]}?" if close else (
                f"known keys here: {', '.join(sorted(schema.keys()))}")
            fail(path, "is not a known key", hint)
        value, default = cfg[key], schema[key]
        if isinstance(default, Mapping):
            if not isinstance(value, Mapping):
                fail(path, f"must be a section (ConfigDict), got {type(value).__name__}",
                     "set its sub-keys instead, e.g. " + f"--config.{path}.<key>=...")
            check_against_schema(value, default, prefix=path + ".")
        elif path in PER_CHANNEL_KEYS and isinstance(value, (list, tuple)):
            if not value or not all(_type_ok(v, 0.0) for v in value):
                fail(path, f"={value!r} must be a float or a list of floats (one per channel)",
                     f"e.g. --config.{path}=0.5 or --config.{path}=(0.48,0.46,0.41)")
        elif not _type_ok(value, default):
            fail(path, f"has type {type(value).__name__} ({value!r}) but must be "
                 f"{type(default).__name__}", f"e.g. --config.{path}={default!r}")


def _check_sections_are_mappings(cfg: Mapping) -> None:
    for section in ("model", "data", "tokenizer", "objective", "evals"):
        if section in cfg and not isinstance(cfg[section], Mapping):
            fail(section, f"must be a section (ConfigDict), got {type(cfg[section]).__name__}",
                 f"set its sub-keys instead, e.g. --config.{section}.<key>=...")
    for name, section in cfg.get("evals", {}).items():
        if not isinstance(section, Mapping) or not isinstance(section.get("kind"), str):
            fail(f"evals.{name}", "has no `kind` (a string)",
                 f"set e.g. --config.evals.{name}.kind=zeroshot")
    if not isinstance(cfg.get("objective", {}).get("name"), str):
        fail("objective.name", f"is {cfg.get('objective', {}).get('name')!r}",
             "name a registered objective, e.g. --config.objective.name=clip")


def _check_optimizer(cfg: Mapping) -> None:
    opt, train = cfg["optimizer"], cfg["train"]
    require_choice(opt, "optimizer", "schedule", SCHEDULES)
    if not opt["lr"] > 0:
        fail("optimizer.lr", f"is {opt['lr']}", "use a positive learning rate")
    require_non_negative(opt, "optimizer", "warmup_steps")
    if opt["warmup_steps"] >= train["num_steps"]:
        fail("optimizer.warmup_steps", f"({opt['warmup_steps']}) is not below "
             f"train.num_steps ({train['num_steps']})", "shorten the warmup")
    if not 0 <= opt["b1"] < 1 or not 0 <= opt["b2"] < 1:
        fail("optimizer.b1", "and b2 must lie in [0, 1)", "use e.g. b1=0.9, b2=0.98")


def _check_train(cfg: Mapping, batch_shards: int, process_count: int) -> None:
    train = cfg["train"]
    require_positive(train, "train", "batch_size", "grad_accum_steps", "num_steps", "log_every",
                     "checkpoint_every", "keep_checkpoints", "max_consecutive_skips")
    require_non_negative(train, "train", "eval_every")
    towers = get_family(cfg["model"]).towers
    require_choice(train, "train", "locked_tower", ("", *towers))
    if not 0 <= train["time_limit_seconds"] < math.inf:
        fail("train.time_limit_seconds", f"is {train['time_limit_seconds']}",
             "use a number of seconds >= 0 (0: no limit)")
    batch = train["batch_size"]
    for divisor, what in ((batch_shards, f"{batch_shards} batch shards (mesh data x fsdp)"),
                          (process_count, f"{process_count} processes")):
        if batch % divisor:
            fail("train.batch_size", f"={batch} does not divide evenly over {what}",
                 f"use a multiple of {divisor}, e.g. --config.train.batch_size="
                 f"{(batch // divisor + 1) * divisor}")
    accum = train["grad_accum_steps"]
    if accum > 1 and batch % (accum * batch_shards):
        fail("train.batch_size", f"={batch} does not split into {accum} micro-batches "
             f"(train.grad_accum_steps) that each divide over {batch_shards} batch shards",
             f"use a multiple of {accum * batch_shards} or change train.grad_accum_steps")


def validate(config: ml_collections.ConfigDict, num_devices: int, process_count: int = 1, *,
             training: bool = True) -> None:
    """Raises ConfigError on the first problem found; returns None when the config is usable.

    `training=False` (evaluating a checkpoint) leaves out the training source's checks: an
    imported model evaluated on benchmarks never reads the data section's dataset.
    """
    cfg = config.to_dict()
    _check_sections_are_mappings(cfg)
    cfg = complete(ml_collections.ConfigDict(cfg)).to_dict()
    check_against_schema(cfg, schema_of(cfg))
    sizes = resolve_mesh_shape(cfg["mesh"], num_devices)
    batch_shards = sizes["data"] * sizes["fsdp"]
    _check_train(cfg, batch_shards, process_count)
    _check_optimizer(cfg)
    check_model(cfg)
    check_tokenizer(cfg)
    objective = get_objective(cfg["objective"]["name"])
    family = get_family(cfg["model"])
    if objective.consumes != family.outputs:
        fits = [name for name, o in OBJECTIVES.items() if o.consumes == family.outputs]
        fail("objective.name", f"={objective.name!r} does not work with model "
             f"{cfg['model']['name']!r} (it trains {'/'.join(sorted(objective.consumes))}, the "
             f"model outputs {'/'.join(sorted(family.outputs))})",
             f"use an objective among {', '.join(fits) or 'none registered'}")
    objective.check(cfg)
    if training:
        check_data(cfg)
    check_evals(cfg["evals"], EvalFacts(
        capabilities=family.capabilities, model_name=cfg["model"]["name"],
        data_dir=cfg["data"]["dir"], image_size=cfg["model"]["image"]["image_size"],
        channels=cfg["model"]["image"]["channels"], batch_shards=batch_shards))
