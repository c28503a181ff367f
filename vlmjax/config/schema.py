"""The schema of a config: fixed sections from `config.defaults`, each component's section
from the registry entry its selector key names (`model.name`, `model.image.kind`, ...).

The central config code restates no component's keys: it asks the registries. `complete`
fills in every key a chosen component has and the config leaves out, so every default is
overridable from the command line and a saved config.json records every value the run used.
"""

import logging
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections

from vlmjax.config.defaults import DEFAULT_OBJECTIVE, channel_stat, fixed_config
from vlmjax.data.registry import PER_CHANNEL_KEYS, data_schema
from vlmjax.evaluators.registry import evaluator_schema
from vlmjax.models.registry import model_schema
from vlmjax.objectives.registry import objective_schema
from vlmjax.tokenizers.registry import TOKENIZER_OPTIONS

log = logging.getLogger(__name__)


def _section(cfg: Mapping, name: str) -> Mapping:
    value = cfg.get(name, {})
    return value if isinstance(value, Mapping) else {}


# Sections whose keys a registry entry decides: section -> (its current value -> schema).
COMPONENT_SECTIONS: dict[str, Callable[[Mapping], dict]] = {
    "model": model_schema,
    "data": data_schema,
    "tokenizer": lambda section: dict(TOKENIZER_OPTIONS),
    "objective": lambda section: objective_schema(section.get("name", DEFAULT_OBJECTIVE)),
}


def schema_of(cfg: Mapping) -> dict:
    """Every allowed key of `cfg` with its default; ConfigError on an unknown component name."""
    schema = fixed_config().to_dict()
    for section, schema_fn in COMPONENT_SECTIONS.items():
        schema[section] = schema_fn(_section(cfg, section))
    schema["evals"] = {name: evaluator_schema(name, section)
                       for name, section in _section(cfg, "evals").items()}
    return schema


def _fill(node: ml_collections.ConfigDict, schema: Mapping, prefix: str) -> None:
    for key, default in schema.items():
        path = f"{prefix}{key}"
        if key not in node:
            if isinstance(default, Mapping):
                node[key] = ml_collections.ConfigDict(dict(default))
            elif path in PER_CHANNEL_KEYS:
                node[key] = channel_stat(default)
            else:
                node[key] = default
        elif isinstance(default, Mapping) and isinstance(node[key], ml_collections.ConfigDict):
            _fill(node[key], default, path + ".")


def complete(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config` (in place, and returned) with every key its components have and it lacks."""
    with config.unlocked():
        _fill(config, schema_of(config.to_dict()), "")
    return config


# base_config(**choices): argument -> (section, selector key) of a component.
SELECTORS = {"model": ("model", "name"), "image": ("model.image", "kind"),
             "text": ("model.text", "kind"), "objective": ("objective", "name"),
             "data": ("data", "name"), "tokenizer": ("tokenizer", "kind")}


def base_config(**choices: str) -> ml_collections.ConfigDict:
    """Every key with its default for the chosen components (the defaults' otherwise), e.g.
    `base_config(model="coca", objective="coca")`."""
    config = fixed_config()
    for name, value in choices.items():
        if name not in SELECTORS:
            raise TypeError(f"base_config() got an unknown component {name!r}; choose among "
                            f"{', '.join(SELECTORS)}")
        section, key = SELECTORS[name]
        node = config
        for part in section.split("."):
            node = node[part]
        node[key] = value
    return complete(config)


def select(config: ml_collections.ConfigDict, key: str, value: str) -> None:
    """Sets the selector `key` (e.g. "model.name") to `value`, swapping the keys the old
    component brought for the new one's defaults."""
    old_schema = schema_of(config.to_dict())
    *path, last = key.split(".")
    node = config
    for part in path:
        node = node[part]
    with node.unlocked():
        node[last] = value
    swap_components(config, old_schema)


def swap_components(config: ml_collections.ConfigDict, old_schema: Mapping) -> None:
    """After a selector changed: drop the old component's keys, add the new one's."""
    new_schema = schema_of(config.to_dict())
    if new_schema != old_schema:
        prune_switched(config, old_schema, new_schema)
        complete(config)


def _plain(value: Any) -> Any:
    return value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value


def prune_switched(node: ml_collections.ConfigDict, old: Mapping, new: Mapping,
                   prefix: str = "") -> None:
    """After a selector changed (say model.image.kind): drops the old component's keys that the
    new one does not have (they could not take effect), logging the ones that were not at their
    defaults. Keys neither component knows stay, so validation names them."""
    for key in list(node.keys()):
        if key not in new and key in old:
            if _plain(node[key]) != _plain(old[key]):
                log.info("config.%s%s=%r dropped: the component chosen now has no such key",
                         prefix, key, _plain(node[key]))
            with node.unlocked():
                del node[key]
        elif (key in new and key in old and isinstance(new[key], Mapping)
              and isinstance(old[key], Mapping) and isinstance(node[key], ml_collections.ConfigDict)):
            prune_switched(node[key], old[key], new[key], f"{prefix}{key}.")
