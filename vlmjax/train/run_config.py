"""What a run's config.json records, and which settings a later invocation may change.

config.json describes what trained the checkpoints: evaluate, convert and resume read it. A run
that has trained steps keeps it as written. Invoking the run again with settings that change
what is trained (model, data, objective, optimizer, batch, seed, tokenizer) fails at once naming
the keys; settings that only extend, bound or observe the run (more steps, time limits,
checkpoint and log cadence, evaluators, mesh layout, loader threads) are allowed and recorded
as dated entries in workdir/config_changes.jsonl. A run without trained steps (fresh, or
imported weights about to be fine-tuned) takes the new config.
"""

import datetime
import json
import os
from collections.abc import Mapping
from typing import Any

import ml_collections

from vlmjax.errors import ConfigError
from vlmjax.train.workdir import is_main_process, load_saved_config

CHANGES_FILE = "config_changes.jsonl"
# Keys (and sections, by prefix) whose change does not change what the checkpoints learn.
NON_TRAINING_KEYS = (
    "train.num_steps", "train.time_limit_seconds", "train.max_consecutive_skips",
    "train.log_every", "train.checkpoint_every", "train.keep_checkpoints", "train.eval_every",
    "evals", "mesh", "sharding_rules", "data.dir", "data.prefetch", "data.num_threads",
    "data.web.num_workers", "data.web.worker_buffer",
)


def _flat(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return out


def config_changes(saved: Mapping, new: Mapping) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (saved value, new value)} of every leaf that differs."""
    old, now = _flat(saved), _flat(new)
    return {k: (old.get(k), now.get(k)) for k in sorted(set(old) | set(now))
            if _jsonable(old.get(k)) != _jsonable(now.get(k))}


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value)) if value is not None else None


def _is_training_key(key: str) -> bool:
    return not any(key == k or key.startswith(k + ".") for k in NON_TRAINING_KEYS)


def check_run_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """For a run with trained steps and a config.json: raises ConfigError naming the training
    keys the new config changes; records the allowed changes (module doc)."""
    path = os.path.join(workdir, "config.json")
    changes = config_changes(load_saved_config(workdir).to_dict(), config.to_dict())
    training = {k: v for k, v in changes.items() if _is_training_key(k)}
    if training:
        listed = ", ".join(f"{k} ({old!r} -> {new!r})" for k, (old, new) in list(training.items())[:4])
        more = f" and {len(training) - 4} more" if len(training) > 4 else ""
        raise ConfigError(f"{workdir} was trained with other settings: {listed}{more}; resume it "
                          f"with its own config ({path}, or no --config) or train into a new "
                          "--workdir")
    if changes and is_main_process():
        entry = {"time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                 "changes": {k: {"from": old, "to": new} for k, (old, new) in changes.items()}}
        with open(os.path.join(workdir, CHANGES_FILE), "a") as f:
            f.write(json.dumps(entry) + "\n")
