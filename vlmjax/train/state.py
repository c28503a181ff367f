"""Builds the model, its abstract train state and shardings, and the initial state.

The train state is {"step", "params", "opt_state"} plus, for models with non-parameter
variables (BatchNorm statistics: every nnx.Variable that is not an nnx.Param), "model_state":
updated by the step, checkpointed and sharded like the parameters.
"""

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from vlmjax.models.family import ModelFamily
from vlmjax.models.registry import get_family
from vlmjax.parallel import mesh as mesh_lib
from vlmjax.train.optimizer import make_optimizer
from vlmjax.train.param_groups import matches

log = logging.getLogger(__name__)


def split_model(module: nnx.Module) -> tuple[Any, dict, dict]:
    """(graphdef, params, model_state) of a module: parameters and every other variable, as
    pure dicts (model_state is {} for models without non-parameter variables)."""
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)
    return graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(rest)


def merge_model(graphdef: Any, params: dict, model_state: dict | None = None) -> nnx.Module:
    """The module back from `split_model`'s parts."""
    return nnx.merge(graphdef, params, model_state or {})


def weights(state: Mapping) -> dict:
    """The parameters and model state of a train state as ONE pure-dict tree (their leaves are
    disjoint): what evaluators merge with the graph (`nnx.merge(graphdef, weights)`)."""
    return _deep_merge(state["params"], state.get("model_state") or {})


def _deep_merge(a: Mapping, b: Mapping) -> dict:
    out = dict(a)
    for key, value in b.items():
        out[key] = _deep_merge(out[key], value) if key in out and isinstance(value, Mapping) else value
    return out


@dataclasses.dataclass(frozen=True)
class StateLayout:
    """The model's graph and the shapes/shardings of its train state."""

    family: ModelFamily
    graphdef: Any
    abstract: dict  # ShapeDtypeStructs with shardings: what a checkpoint restores into
    sharding: dict
    tx: Any
    schedule: Any
    locked: Any

    @property
    def has_model_state(self) -> bool:
        return "model_state" in self.abstract

    def init(self, seed: int, build: Any) -> dict:
        """Freshly initialised state, created directly in its sharded layout."""
        tx, with_state = self.tx, self.has_model_state

        def create() -> dict:
            _, params, model_state = split_model(build(nnx.Rngs(seed)))
            return _state(params, model_state if with_state else None, tx)

        return jax.jit(create, out_shardings=self.sharding)()

    def from_params(self, params: dict, model_state: dict | None = None) -> dict:
        """Step-0 state around given parameters (imported weights) with this layout's fresh
        optimizer state, everything placed in its sharded layout."""
        tx = self.tx
        return jax.jit(lambda p, s: _state(p, s, tx), out_shardings=self.sharding)(
            params, model_state if self.has_model_state else None)


def _state(params: dict, model_state: dict | None, tx: Any) -> dict:
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
    if model_state is not None:
        state["model_state"] = model_state
    return state


def model_builder(config: Mapping, vocab_size: int, context_length: int) -> Any:
    """rngs -> model module for this config."""
    family = get_family(config["model"])
    return lambda rngs: family.build(config["model"], vocab_size, context_length, rngs=rngs)


def state_layout(config: Mapping, vocab_size: int, context_length: int, mesh: Mesh) -> StateLayout:
    """Traces the model abstractly (no memory) to get shapes, logical axes and shardings."""
    family = get_family(config["model"])
    build = model_builder(config, vocab_size, context_length)
    abstract_model = nnx.eval_shape(lambda: build(nnx.Rngs(0)))
    graphdef, abstract_params, abstract_rest = nnx.split(abstract_model, nnx.Param, ...)
    rules = config["sharding_rules"]
    params_sharding = mesh_lib.param_shardings(mesh_lib.logical_axes_of(abstract_params), mesh, rules)
    if mesh.shape.get("fsdp", 1) > 1:
        whole = mesh_lib.replicated_bytes(mesh_lib.logical_axes_of(abstract_params),
                                          params_sharding, min_bytes=2 ** 20)
        if whole:
            log.warning("%d parameters of >= 1 MiB stay whole on every device (no rule axis "
                        "divides them), e.g. %s (%.1f MiB)", len(whole), whole[0][0],
                        whole[0][1] / 2 ** 20)
    params = nnx.to_pure_dict(abstract_params)
    tx, schedule = make_optimizer(config, params, family.towers)
    abstract = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": params,
                "opt_state": jax.eval_shape(tx.init, params)}
    model_state = nnx.to_pure_dict(abstract_rest)
    extra = {}
    if jax.tree.leaves(model_state):
        abstract["model_state"] = model_state
        extra["model_state"] = mesh_lib.param_shardings(mesh_lib.logical_axes_of(abstract_rest),
                                                        mesh, rules)
    sharding = {**mesh_lib.state_shardings(abstract, params_sharding, mesh), **extra}
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            abstract, sharding)
    locked_tower = config["train"]["locked_tower"]
    locked = (matches(family.towers[locked_tower], params) if locked_tower
              else jax.tree.map(lambda _: False, params))
    return StateLayout(family=family, graphdef=graphdef, abstract=abstract, sharding=sharding,
                       tx=tx, schedule=schedule, locked=locked)
