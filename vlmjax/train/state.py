"""Builds the model, its abstract train state and shardings, and the initial state."""

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from vlmjax.models.registry import ModelSpec, get_model_spec
from vlmjax.parallel import mesh as mesh_lib
from vlmjax.train.optimizer import make_optimizer
from vlmjax.train.param_groups import matches

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class StateLayout:
    """The model's graph and the shapes/shardings of {step, params, opt_state}."""

    model_spec: ModelSpec
    graphdef: Any
    abstract: dict  # ShapeDtypeStructs with shardings: what a checkpoint restores into
    sharding: dict
    tx: Any
    schedule: Any
    locked: Any

    def init(self, seed: int, build: Any) -> dict:
        """Freshly initialised state, created directly in its sharded layout."""
        tx = self.tx

        def create() -> dict:
            params = nnx.to_pure_dict(nnx.state(build(nnx.Rngs(seed))))
            return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}

        return jax.jit(create, out_shardings=self.sharding)()

    def from_params(self, params: dict) -> dict:
        """Step-0 state around given parameters (imported weights) with this layout's fresh
        optimizer state, everything placed in its sharded layout."""
        tx = self.tx
        return jax.jit(lambda p: {"step": jnp.zeros((), jnp.int32), "params": p,
                                  "opt_state": tx.init(p)}, out_shardings=self.sharding)(params)


def model_builder(config: Mapping, vocab_size: int, context_length: int) -> Any:
    """rngs -> model module for this config."""
    spec = get_model_spec(config["model"]["name"])
    return lambda rngs: spec.build(config["model"], vocab_size, context_length, rngs=rngs)


def state_layout(config: Mapping, vocab_size: int, context_length: int, mesh: Mesh) -> StateLayout:
    """Traces the model abstractly (no memory) to get shapes, logical axes and shardings."""
    spec = get_model_spec(config["model"]["name"])
    build = model_builder(config, vocab_size, context_length)
    abstract_model = nnx.eval_shape(lambda: build(nnx.Rngs(0)))
    graphdef, abstract_state = nnx.split(abstract_model)
    axes = mesh_lib.logical_axes_of(abstract_state)
    params_sharding = mesh_lib.param_shardings(axes, mesh, config["sharding_rules"])
    if mesh.shape.get("fsdp", 1) > 1:
        whole = mesh_lib.replicated_bytes(axes, params_sharding, min_bytes=2 ** 20)
        if whole:
            log.warning("%d parameters of >= 1 MiB stay whole on every device (no rule axis "
                        "divides them), e.g. %s (%.1f MiB)", len(whole), whole[0][0],
                        whole[0][1] / 2 ** 20)
    abstract_params = nnx.to_pure_dict(abstract_state)
    tx, schedule = make_optimizer(config, abstract_params, spec.towers)
    abstract = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": abstract_params,
                "opt_state": jax.eval_shape(tx.init, abstract_params)}
    sharding = mesh_lib.state_shardings(abstract, params_sharding, mesh)
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            abstract, sharding)
    locked_tower = config["train"]["locked_tower"]
    locked = (matches(spec.towers[locked_tower], abstract_params) if locked_tower
              else jax.tree.map(lambda _: False, abstract_params))
    return StateLayout(model_spec=spec, graphdef=graphdef, abstract=abstract, sharding=sharding,
                       tx=tx, schedule=schedule, locked=locked)
