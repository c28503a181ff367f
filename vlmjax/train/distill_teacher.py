"""The teacher of a distillation run (model.name='distill'): resolved, pinned and loaded.

- `resolve_teacher` (before validation): reads the teacher run named by
  `model.distill.teacher` (refusing a missing directory, one that is not a run, a step it does
  not hold, a tokenizer or image normalisation the student cannot share), pins
  `model.distill.teacher_step` (-1: its latest step now) and copies the teacher's model section
  into `model.distill.teacher_model`; both are recorded in the run's config.json, which alone
  then rebuilds the model. A resumed run takes them from its config.json, never from the
  teacher directory, so a checkpoint written into the teacher run later is not picked up.
- `adopt_teacher_tokenizer`: the student's run stores a copy of the teacher's tokenizer (the
  teacher's text tower reads the student's token ids).
- `attach_teacher` (fresh start only): puts the teacher's weights at the pinned step into the
  "teacher" subtree of the train state's model_state (`models.distill`: frozen variables); a
  resumed run restores them from its own checkpoint.
"""

import json
import logging
import os
import shutil
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections

from vlmjax.data.normalization import channel_stats
from vlmjax.errors import CheckpointError
from vlmjax.models.distill import TEACHER_PREFIX
from vlmjax.options import fail
from vlmjax.train.checkpoint import Checkpointer
from vlmjax.train.run import CHECKPOINT_DIR, TOKENIZER_DIR, load_run
from vlmjax.train.state import StateLayout
from vlmjax.train.workdir import has_trained_steps, is_main_process, load_saved_config

log = logging.getLogger(__name__)
TOKENIZER_KEYS = ("kind", "path", "vocab_size", "context_length")


def is_distill(cfg: Mapping) -> bool:
    return cfg["model"]["name"] == "distill"


def _plain(value: Any) -> Any:
    value = value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value
    return json.loads(json.dumps(value))


def _teacher_config(teacher: str) -> ml_collections.ConfigDict:
    """The teacher run's completed config.json; ConfigError when `teacher` is not a run."""
    key = "model.distill.teacher"
    if not os.path.isdir(teacher):
        fail(key, f"={teacher!r} does not exist", "point it at a vlmjax run directory (trained "
             "with vlmjax.train or imported with vlmjax.convert)")
    missing = [name for name in ("config.json", TOKENIZER_DIR, CHECKPOINT_DIR)
               if not os.path.exists(os.path.join(teacher, name))]
    if missing:
        fail(key, f"={teacher!r} is not a vlmjax run (no {', '.join(missing)})",
             "point it at a run directory that vlmjax.train or vlmjax.convert wrote")
    return load_saved_config(teacher)


def _pinned_step(teacher: str, step: int) -> int:
    """`step`, or the teacher's latest for -1; ConfigError when the run does not hold it."""
    try:
        with Checkpointer(os.path.join(teacher, CHECKPOINT_DIR), read_only=True) as ckpt:
            steps, latest = ckpt.all_steps(), ckpt.latest_step()
    except CheckpointError:
        steps, latest = [], None
    if latest is None:
        fail("model.distill.teacher", f"={teacher!r} holds no checkpoint",
             "train the teacher first, or name another run")
    if step == -1:
        return latest
    if step not in steps:
        fail("model.distill.teacher_step", f"={step} is not a checkpoint of {teacher}",
             f"choose one of {steps} (or -1 for its latest, {latest})")
    return step


def _check_compatible(cfg: Mapping, teacher_cfg: Mapping, teacher: str) -> None:
    """The student's token ids and normalised images must be the teacher's inputs."""
    ours, theirs = cfg["tokenizer"], teacher_cfg["tokenizer"]
    differ = [k for k in TOKENIZER_KEYS if _plain(ours[k]) != _plain(theirs[k])]
    if differ:
        fix = " ".join(f"--config.tokenizer.{k}={theirs[k]!r}" for k in differ)
        fail(f"tokenizer.{differ[0]}", f"={ours[differ[0]]!r} differs from the teacher's "
             f"({theirs[differ[0]]!r}, {teacher}); its text tower could not read the student's "
             "token ids", f"use the teacher's tokenizer: {fix}")
    for key in ("image_mean", "image_std"):
        student, teacher_value = (channel_stats(cfg["data"][key]),
                                  channel_stats(teacher_cfg["data"][key]))
        if student != teacher_value:
            fail(f"data.{key}", f"={student} differs from the teacher's ({teacher_value}); the "
                 "teacher sees the student's normalised images",
                 f"set --config.data.{key}={teacher_value}")


def _saved_distill(workdir: str) -> Mapping | None:
    """The distill section of the run's config.json when the run has trained steps."""
    if not (has_trained_steps(workdir) and os.path.isfile(os.path.join(workdir, "config.json"))):
        return None
    saved = load_saved_config(workdir).to_dict()
    return saved["model"].get("distill") if saved["model"]["name"] == "distill" else None


def resolve_teacher(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
    """`config` (in place, returned) with the teacher's step pinned and its model section
    filled (module doc); a no-op for other families or an unnamed teacher."""
    if not is_distill(config) or not config.model.distill.teacher:
        return config
    distill = config.model.distill
    saved = _saved_distill(workdir)
    if saved is not None and saved["teacher"] == distill.teacher:
        # Resuming: the teacher's weights are in this run's checkpoints; unresolved keys take
        # the recorded values (explicit different ones are refused by check_run_config).
        with distill.unlocked():
            if distill.teacher_step == -1:
                distill.teacher_step = saved["teacher_step"]
            if not distill.teacher_model:
                distill.teacher_model = ml_collections.ConfigDict(saved["teacher_model"])
        return config
    teacher_cfg = _teacher_config(distill.teacher)
    step = _pinned_step(distill.teacher, distill.teacher_step)
    _check_compatible(config.to_dict(), teacher_cfg.to_dict(), distill.teacher)
    teacher_model = teacher_cfg.model.to_dict()
    if distill.teacher_model and _plain(distill.teacher_model) != _plain(teacher_model):
        fail("model.distill.teacher_model", f"differs from the model of the teacher run "
             f"{distill.teacher}", "leave it empty: it is copied from the teacher's config.json")
    with distill.unlocked():
        distill.teacher_step = step
        distill.teacher_model = ml_collections.ConfigDict(teacher_model)
    log.info("teacher %s pinned at step %d (%s)", distill.teacher, step, teacher_model["name"])
    return config


def adopt_teacher_tokenizer(cfg: Mapping, workdir: str) -> None:
    """A fresh distillation run stores a copy of the teacher's tokenizer (main process)."""
    target = os.path.join(workdir, TOKENIZER_DIR)
    if not is_distill(cfg) or os.path.isdir(target) or not is_main_process():
        return
    partial = f"{target}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(os.path.join(cfg["model"]["distill"]["teacher"], TOKENIZER_DIR), partial)
    os.replace(partial, target)


def attach_teacher(cfg: Mapping, state: dict, layout: StateLayout) -> dict:
    """`state` with the teacher's weights at the pinned step in model_state["teacher"]."""
    if not is_distill(cfg):
        return state
    distill = cfg["model"]["distill"]
    teacher = load_run(distill["teacher"], distill["teacher_step"])
    values = jax.device_get(teacher.weights)
    target = state["model_state"][TEACHER_PREFIX]
    if jax.tree_util.tree_structure(values) != jax.tree_util.tree_structure(target) or any(
            a.shape != b.shape
            for a, b in zip(jax.tree.leaves(values), jax.tree.leaves(target), strict=True)):
        raise CheckpointError(f"the weights of {distill['teacher']} at step "
                              f"{distill['teacher_step']} do not fit the teacher its config.json "
                              "describes; name another teacher run")
    placed = jax.device_put(values, layout.sharding["model_state"][TEACHER_PREFIX])
    log.info("loaded teacher %s at step %d", distill["teacher"], teacher.step)
    return {**state, "model_state": {**state["model_state"], TEACHER_PREFIX: placed}}

