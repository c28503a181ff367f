"""Loads `get_config(arg)` config files and applies `--config.key=value` overrides."""

import ast
import difflib
import importlib.util
import os

import ml_collections

from vlmjax.config.defaults import channel_stat
from vlmjax.config.schema import complete, schema_of, swap_components
from vlmjax.data.registry import PER_CHANNEL_KEYS
from vlmjax.errors import ConfigError


def is_eval_suite(config: ml_collections.ConfigDict) -> bool:
    """True for a config that only lists evaluators (configs/eval/*), not a whole experiment."""
    return set(config.keys()) == {"evals"}


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """Runs `get_config(arg)` of the file in `spec` = "path.py" or "path.py:arg"."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist; pass --config path/to/config.py")
    module_spec = importlib.util.spec_from_file_location("_vlmjax_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path} has no get_config(arg) function; define one "
                          "that returns an ml_collections.ConfigDict")
    try:
        config = module.get_config(arg) if arg else module.get_config()
    except (TypeError, KeyError) as e:  # ConfigDict's own type and key checks
        message = str(e).strip("'\"")
        raise ConfigError(f"{path}: {message}; fix that assignment in get_config()") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"get_config() in {path} returned {type(config).__name__}; it must "
                          "return an ml_collections.ConfigDict")
    return config


def _parse_value(raw: str, current: object, key: str) -> object:
    if key in PER_CHANNEL_KEYS:  # a float or one float per channel
        try:
            value = ast.literal_eval(raw) if raw.strip() else raw
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            value = raw  # not a Python literal: reported below
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, (list, tuple)):
            return tuple(value)
        raise ConfigError(f"config.{key}={raw!r} is neither a float nor a per-channel list; "
                          f"e.g. --config.{key}=0.5 or --config.{key}=(0.48,0.46,0.41)")
    if isinstance(current, bool):
        lowered = raw.lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ConfigError(f"config.{key}={raw!r} is not a boolean; use true or false")
    if isinstance(current, str):
        return raw
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        if current is None:
            return raw
        raise ConfigError(f"config.{key}={raw!r} cannot be parsed as "
                          f"{type(current).__name__}; e.g. --config.{key}={current!r}") from None
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if current is not None and not isinstance(value, type(current)) and not (
            isinstance(current, (tuple, list)) and isinstance(value, (tuple, list))):
        raise ConfigError(f"config.{key}={raw!r} has type {type(value).__name__} but must be "
                          f"{type(current).__name__}; e.g. --config.{key}={current!r}")
    return value


def _find(config: ml_collections.ConfigDict, parts: list[str]) -> ml_collections.ConfigDict | None:
    """The section holding key `parts[-1]`, or None where the path does not exist."""
    node = config
    for part in parts[:-1]:
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            return None
        node = node[part]
    if not isinstance(node, ml_collections.ConfigDict) or parts[-1] not in node:
        return None
    return node


def _missing_key_error(config: ml_collections.ConfigDict, key: str) -> ConfigError:
    parts, node = key.split("."), config
    for i, part in enumerate(parts):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            known = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
            close = difflib.get_close_matches(part, known, n=1)
            prefix = ".".join(parts[:i] + close[:1])
            hint = f"did you mean --config.{prefix}?" if close else "check the key's spelling"
            return ConfigError(f"--config.{key}: config.{'.'.join(parts[:i + 1])} is not a key "
                               f"of this config; {hint}")
        node = node[part]
    return ConfigError(f"--config.{key} is not a key of this config")


def apply_override(config: ml_collections.ConfigDict, key: str, raw: str) -> None:
    """Sets dotted `key` to `raw` parsed as the existing value's type.

    Every key of the config's components is overridable, also where the file left it at its
    default; `--config.evals.NAME.kind=KIND` adds an evaluator. Changing a component (a `name`
    or `kind`) swaps the keys the old one brought for the new one's defaults.
    """
    parts = key.split(".")
    node = _find(config, parts)
    if node is None:
        complete(config)
        node = _find(config, parts)
    if node is None and len(parts) == 3 and parts[0] == "evals" and parts[2] == "kind":
        with config.unlocked():
            config.evals[parts[1]] = ml_collections.ConfigDict({"kind": raw})
        complete(config)
        return
    if node is None:
        raise _missing_key_error(config, key)
    current = node[parts[-1]]
    if isinstance(current, ml_collections.ConfigDict):
        raise ConfigError(f"--config.{key} names a section; set one of its keys instead: "
                          f"{', '.join(current.keys())}")
    value = _parse_value(raw, current, key)
    old_schema = schema_of(config.to_dict())
    with node.unlocked():
        if key in PER_CHANNEL_KEYS:  # a config rebuilt from JSON typed the field float or list
            del node[parts[-1]]
            value = channel_stat(value)
        node[parts[-1]] = value
    swap_components(config, old_schema)  # when a component's name or kind changed


def config_from_args(spec: str, overrides: list[str],
                     base: ml_collections.ConfigDict | None = None) -> ml_collections.ConfigDict:
    """Loads the config file, then applies `key=value` overrides in order.

    An evaluation suite (a file whose config has only `evals`) needs `base`, the config of
    the run it evaluates: the result is `base` with its evals replaced by the suite's. Without
    a file (`spec` empty), the overrides apply to `base` (a run's saved config).
    """
    if not spec:
        if base is None:
            raise ConfigError("no config: give --config path/to/config.py, or a --workdir that "
                              "holds a run's config.json")
        config = ml_collections.ConfigDict(base.to_dict())
    else:
        config = load_config_file(spec)
    if spec and is_eval_suite(config):
        if base is None:
            raise ConfigError(f"{spec} is an evaluation suite (only `evals`); use it with "
                              "`python -m vlmjax.evaluate --workdir RUN --config ...`")
        suite, config = config, ml_collections.ConfigDict(base.to_dict())
        config.evals = suite.evals
    complete(config)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--config.{key} needs a value: --config.{key}=VALUE")
        apply_override(config, key, raw)
    return config
