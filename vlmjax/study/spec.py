"""A study: one base config plus axes, expanded into named runs (the cross product of the axes).

A study file defines `get_study(arg="")` returning a plain dict:

    {"config": "configs/test/tiny_clip.py",          # the base config (path.py[:arg])
     "overrides": {"train.num_steps": 40},           # keys every run sets (optional)
     "axes": {                                       # the cross product of these, in order
         "objective": {"clip": {"objective.name": "clip"},          # presets: label -> keys
                       "siglip": {"config": "configs/test/tiny_clip.py:siglip"}},
         "steps": {"train.num_steps": [20, 40]},     # a sweep: one key, a list of values
         "seed": {"seed": [0, 1]}},
     "objective_axis": "objective", "seed_axis": "seed",  # (these defaults; for the report)
     "scaling": {"data": "steps", "model": "size"}}  # axes the report plots accuracy against

An axis is either a sweep (exactly one key mapped to a list of values) or presets (labels
mapped to dicts of keys, so one value can set several keys, e.g. a model size). The pseudo-key
`config` in a preset replaces the base config file for those runs. Any existing config key may
be set; unknown keys and bad values are found by `vlmjax.study.check` before any run starts.
Run names join `axis=label` in axis order, e.g. `objective=siglip,steps=40,seed=1`.
"""

import dataclasses
import hashlib
import importlib.util
import itertools
import json
import os
import re
from collections.abc import Mapping
from typing import Any

from vlmjax.errors import ConfigError

CONFIG_KEY = "config"  # the pseudo-key of a preset that replaces the base config file
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")
_TOP_KEYS = {"config", "overrides", "axes", "objective_axis", "seed_axis", "scaling"}


@dataclasses.dataclass(frozen=True)
class Axis:
    """One axis: its labels in order and, per label, the config keys it sets."""

    name: str
    labels: tuple[str, ...]
    settings: tuple[dict[str, Any], ...]  # one per label

    @property
    def keys(self) -> list[str]:
        """The config keys this axis sets (in first-seen order)."""
        return list(dict.fromkeys(k for s in self.settings for k in s))


@dataclasses.dataclass(frozen=True)
class Run:
    """One run of a study: its directory name, axis labels, config file and overrides."""

    index: int
    name: str
    labels: dict[str, str]  # axis -> label
    config: str  # config file spec as written (path.py[:arg])
    overrides: dict[str, Any]  # dotted key -> value, applied in this order

    def override_args(self) -> list[str]:
        """The overrides as `--config.key=value` arguments that `vlmjax.train` parses back."""
        return [f"--config.{key}={raw_value(value)}" for key, value in self.overrides.items()]

    def record(self) -> dict:
        return {"index": self.index, "name": self.name, "labels": self.labels,
                "config": self.config, "overrides": _jsonable(self.overrides)}


@dataclasses.dataclass(frozen=True)
class Study:
    """A loaded study file: base config, shared overrides, axes and the report's roles."""

    source: str  # the study file spec as given
    config: str
    overrides: dict[str, Any]
    axes: tuple[Axis, ...]
    objective_axis: str
    seed_axis: str
    scaling: dict[str, dict]  # "data" / "model" -> {"axis": name, "x": {label: number}}

    def runs(self, extra: Mapping[str, Any] | None = None) -> list[Run]:
        """The cross product of the axes (the last axis varies fastest), `extra` set in all."""
        extra = dict(extra or {})
        runs = []
        combos = itertools.product(*(range(len(a.labels)) for a in self.axes))
        for index, picks in enumerate(combos):
            config, overrides = self.config, {**self.overrides, **extra}
            labels = {}
            for axis, pick in zip(self.axes, picks, strict=True):
                labels[axis.name] = axis.labels[pick]
                for key, value in axis.settings[pick].items():
                    if key == CONFIG_KEY:
                        config = value
                    else:
                        overrides[key] = value
            name = ",".join(f"{a}={label}" for a, label in labels.items()) or "run"
            runs.append(Run(index, name, labels, config, overrides))
        return runs

    def record(self, runs: list[Run]) -> dict:
        """What study.json holds: enough to recognise the study and to report on it."""
        return {"study": self.source,
                "axes": [{"name": a.name, "labels": list(a.labels), "keys": a.keys} for a in self.axes],
                "objective_axis": self.objective_axis, "seed_axis": self.seed_axis,
                "scaling": self.scaling, "runs": [r.record() for r in runs],
                "fingerprint": fingerprint(runs)}


def fingerprint(runs: list[Run]) -> str:
    """A hash of what the runs are (names, config files, overrides): equal studies, equal hash."""
    text = json.dumps([[r.name, r.config, _jsonable(r.overrides)] for r in runs], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def raw_value(value: Any) -> str:
    """A value as `--config.key=` text that `vlmjax.config.apply_override` parses back to it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return repr(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def label_of(value: Any) -> str:
    """A filesystem-safe label for a sweep value: 0.5 -> '0.5', 'B/16' -> 'B_16', True -> 'true'."""
    text = raw_value(value)
    return _UNSAFE.sub("_", text).strip("_") or "_"


def load_study(spec: str) -> Study:
    """Runs `get_study(arg)` of the file in `spec` ("path.py" or "path.py:arg") and checks its shape."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"study file {path!r} does not exist; pass --config path/to/study.py")
    module_spec = importlib.util.spec_from_file_location("_vlmjax_study", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_study"):
        raise ConfigError(f"study file {path} has no get_study(arg) function; define one that "
                          "returns a dict with 'config' and 'axes' (see vlmjax/study/spec.py)")
    try:
        study = module.get_study(arg) if arg else module.get_study()
    except (TypeError, ValueError, KeyError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise ConfigError(f"{path}: get_study({arg!r}) failed: {message}") from None
    return parse_study(study, spec)


def parse_study(study: Any, source: str) -> Study:
    """Checks a study dict (ConfigError listing every problem of its shape) and builds the Study."""
    problems: list[str] = []
    if not isinstance(study, Mapping):
        raise ConfigError(f"{source}: get_study() returned {type(study).__name__}; it must return a dict")
    unknown = sorted(set(study) - _TOP_KEYS)
    if unknown:
        problems.append(f"unknown entries {', '.join(map(repr, unknown))} (known: "
                        f"{', '.join(sorted(_TOP_KEYS))})")
    config = study.get("config")
    if not isinstance(config, str) or not config:
        problems.append("'config' must name the base config file, e.g. 'configs/demo/clip_fashion_mnist.py'")
    overrides = study.get("overrides", {})
    if not isinstance(overrides, Mapping) or not all(isinstance(k, str) for k in overrides):
        problems.append("'overrides' must be a dict of dotted config keys to values")
        overrides = {}
    raw_axes = study.get("axes", {})
    axes = []
    if not isinstance(raw_axes, Mapping):
        problems.append("'axes' must be a dict of axis name -> sweep or presets")
        raw_axes = {}
    for name, raw in raw_axes.items():
        axis = _parse_axis(name, raw, problems)
        if axis is not None:
            axes.append(axis)
    _check_conflicts(axes, overrides, problems)
    names = [a.name for a in axes]
    objective_axis = study.get("objective_axis", "objective")
    seed_axis = study.get("seed_axis", "seed")
    for role, axis in (("objective_axis", objective_axis), ("seed_axis", seed_axis)):
        if not isinstance(axis, str):
            problems.append(f"'{role}' must be an axis name")
        elif role in study and axis not in names:
            problems.append(f"'{role}' names {axis!r}, which is not an axis ({', '.join(names) or 'none'})")
    scaling = _parse_scaling(study.get("scaling", {}), axes, problems)
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    return Study(source, config, dict(overrides), tuple(axes), objective_axis, seed_axis, scaling)


def _parse_axis(name: Any, raw: Any, problems: list[str]) -> Axis | None:
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]*", name):
        problems.append(f"axis name {name!r} must be a word (letters, digits, _ . -)")
        return None
    if not isinstance(raw, Mapping) or not raw:
        problems.append(f"axis {name!r} must be a sweep {{'key': [values]}} or presets "
                        "{'label': {'key': value}}")
        return None
    first = next(iter(raw.values()))
    if len(raw) == 1 and isinstance(first, (list, tuple)):  # a sweep of one key
        key = next(iter(raw))
        if not first:
            problems.append(f"axis {name!r}: {key} has no values")
            return None
        labels = tuple(label_of(v) for v in first)
        settings = tuple({key: v} for v in first)
    elif all(isinstance(v, Mapping) for v in raw.values()):
        labels = tuple(str(label) for label in raw)
        settings = tuple(dict(v) for v in raw.values())
        for label in labels:
            if label_of(label) != label:
                problems.append(f"axis {name!r}: label {label!r} is not filesystem-safe; use "
                                f"{label_of(label)!r}")
        for label, setting in zip(labels, settings, strict=True):
            bad = [k for k in setting if not isinstance(k, str) or not k]
            if bad or not setting:
                problems.append(f"axis {name!r}: preset {label!r} must map dotted config keys to values")
            if CONFIG_KEY in setting and not isinstance(setting[CONFIG_KEY], str):
                problems.append(f"axis {name!r}: preset {label!r}: 'config' must be a config file path")
    else:
        problems.append(f"axis {name!r} is neither a sweep (exactly one key with a list of values) "
                        "nor presets (every label mapped to a dict of keys)")
        return None
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        problems.append(f"axis {name!r} has the label(s) {', '.join(duplicates)} more than once")
    return Axis(name, labels, settings)


def _check_conflicts(axes: list[Axis], overrides: Mapping, problems: list[str]) -> None:
    """A key set by two axes, or by an axis and the shared overrides, would be ambiguous."""
    owner: dict[str, str] = {key: "'overrides'" for key in overrides}
    for axis in axes:
        for key in axis.keys:
            if key in owner:
                problems.append(f"{key} is set by axis {axis.name!r} and by {owner[key]}; set it in one "
                                "place")
            else:
                owner[key] = f"axis {axis.name!r}"


def _parse_scaling(raw: Any, axes: list[Axis], problems: list[str]) -> dict[str, dict]:
    """{"data"|"model": {"axis": name, "x": {label: number}}} from "axis" or {"axis", "x"} entries."""
    if not isinstance(raw, Mapping):
        problems.append("'scaling' must map 'data' and/or 'model' to an axis name")
        return {}
    by_name = {a.name: a for a in axes}
    scaling = {}
    for role, entry in raw.items():
        if role not in ("data", "model"):
            problems.append(f"'scaling' has {role!r}; use 'data' and/or 'model'")
            continue
        entry = {"axis": entry} if isinstance(entry, str) else entry
        if not isinstance(entry, Mapping) or entry.get("axis") not in by_name:
            problems.append(f"scaling.{role} must name one of the axes ({', '.join(by_name) or 'none'})")
            continue
        axis = by_name[entry["axis"]]
        x = dict(entry.get("x", {}))
        # A numeric sweep of the data axis (one key, one number per label) is its own x. Presets
        # are not, even where one of them sets a single number (a "demo" size that only sets
        # model.embed_dim), and the model axis' x is each run's parameter count unless given.
        sweep = role == "data" and len(axis.keys) == 1 and all(len(s) == 1 for s in axis.settings)
        for label in axis.labels if sweep else ():
            if label in x:
                continue
            value = axis.settings[axis.labels.index(label)][axis.keys[0]]
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                x[label] = float(value)
        missing = [label for label in axis.labels if label not in x]
        if missing and role == "data":
            problems.append(f"scaling.data: give x for {', '.join(missing)} (e.g. 'x': {{label: "
                            "number of training images}})")
        scaling[role] = {"axis": axis.name, "x": {k: float(v) for k, v in x.items()}}
    return scaling
