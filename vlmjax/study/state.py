"""The study directory: its record (study.json, which refuses another study's runs) and each
run's state read from its run directory (new, interrupted or finished)."""

import fcntl
import json
import os
from collections.abc import Mapping
from typing import IO

from vlmjax.errors import VlmjaxError

RECORD = "study.json"
NEW, INTERRUPTED, FINISHED = "new", "interrupted", "finished"


def latest_step(run_dir: str) -> int | None:
    """The step checkpoints/LATEST names (the newest finished save), None without one."""
    try:
        with open(os.path.join(run_dir, "checkpoints", "LATEST")) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def results_step(run_dir: str) -> int | None:
    """The step of the run's results.json, None without one."""
    try:
        with open(os.path.join(run_dir, "results.json")) as f:
            return int(json.load(f)["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def run_state(run_dir: str, num_steps: int, has_evals: bool) -> str:
    """FINISHED: trained to num_steps (and evaluated there when it has evaluators);
    INTERRUPTED: a checkpoint or a started directory to resume from; NEW: nothing yet."""
    latest = latest_step(run_dir)
    if latest is not None and latest >= num_steps and (not has_evals or results_step(run_dir) == latest):
        return FINISHED
    if latest is not None:
        return INTERRUPTED
    return NEW


def claim_directory(directory: str, record: Mapping, write: bool = True) -> None:
    """Writes directory/study.json (unless `write` is false), or checks that the one there is this
    study's (VlmjaxError if not: other runs) and refreshes it (same runs, e.g. new scaling x)."""
    path = os.path.join(directory, RECORD)
    if os.path.isfile(path):
        with open(path) as f:
            try:
                existing = json.load(f)
            except json.JSONDecodeError:
                existing = {}
        if existing.get("fingerprint") != record["fingerprint"]:
            raise VlmjaxError(f"{directory} holds another study ({_difference(existing, record)}); "
                              "use a new --workdir, or the study config and overrides that made it")
        if not write or existing == json.loads(json.dumps(record)):  # (tuples read back as lists)
            return
        # The same runs: the record follows the study file's current reading (e.g. its scaling).
    elif os.path.isdir(directory) and os.listdir(directory):
        raise VlmjaxError(f"{directory} is not empty and holds no {RECORD}, so it is not a study "
                          "directory; pass an empty or new --workdir")
    if not write:
        return
    os.makedirs(directory, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1)
    os.replace(tmp, path)


def lock_directory(directory: str) -> IO:
    """An exclusive lock on directory/study.lock for as long as the returned file stays open, so
    that two local runners of one study never train the same run at once (VlmjaxError if taken)."""
    handle = open(os.path.join(directory, "study.lock"), "a+")  # noqa: SIM115 (held by the caller)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise VlmjaxError(f"another `python -m vlmjax.study` (pid {holder}) is running the study in "
                          f"{directory}; wait for it or stop it (Ctrl-C checkpoints its run)") from None
    handle.truncate(0)
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def load_record(directory: str) -> dict:
    """The study.json of a study directory (VlmjaxError naming the fix when there is none)."""
    path = os.path.join(directory, RECORD)
    if not os.path.isfile(path):
        raise VlmjaxError(f"{path} does not exist: {directory} is not a study directory (made by "
                          "`python -m vlmjax.study --config STUDY.py --workdir DIR`)")
    with open(path) as f:
        return json.load(f)


def _difference(existing: Mapping, record: Mapping) -> str:
    """The first way the recorded study differs from this one, for the refusal message."""
    if not existing.get("runs"):
        return f"its {RECORD} is unreadable"
    before = {r["name"]: r for r in existing["runs"]}
    now = {r["name"]: r for r in record["runs"]}
    if before.keys() != now.keys():
        extra = sorted(before.keys() - now.keys())
        new = sorted(now.keys() - before.keys())
        parts = []
        if extra:
            parts.append(f"runs {', '.join(extra[:2])}{'...' if len(extra) > 2 else ''} not in this study")
        if new:
            parts.append(f"no runs {', '.join(new[:2])}{'...' if len(new) > 2 else ''}")
        return f"made by {existing.get('study')!r}: " + "; ".join(parts)
    for name, run in now.items():
        old = before[name]
        if old["config"] != run["config"]:
            return f"run {name} used config {old['config']!r}, this study {run['config']!r}"
        for key in sorted(old["overrides"].keys() | run["overrides"].keys()):
            a, b = old["overrides"].get(key, "(unset)"), run["overrides"].get(key, "(unset)")
            if a != b:
                return f"run {name} had {key}={a!r}, this study sets {b!r}"
    return f"made by {existing.get('study')!r}"
