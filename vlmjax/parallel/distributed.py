"""Joins a multi-process JAX job (explicit flags, a SLURM step, a Cloud TPU pod slice) before any device use.

Modes, first match wins:
- explicit: `--coordinator_address HOST:PORT --num_processes N --process_id I` (or the VLMJAX_* variables);
- slurm: inside an `srun` step of more than one task; JAX reads SLURM_* itself. One task per GPU (JAX gives
  task SLURM_LOCALID the GPU of that index) or one task per node (it gets every GPU of the node);
- tpu: on a Cloud TPU VM that is one worker of several (a pod slice, or several slices);
- single: anything else, including a single-host TPU VM and a one-task SLURM job: nothing is initialised.
"""

import dataclasses
import logging
import os
from collections.abc import Mapping
from typing import Any

import jax

from vlmjax.errors import ConfigError

log = logging.getLogger(__name__)

COORDINATOR_ENV = "VLMJAX_COORDINATOR_ADDRESS"
NUM_PROCESSES_ENV = "VLMJAX_NUM_PROCESSES"
PROCESS_ID_ENV = "VLMJAX_PROCESS_ID"
# Environment of a task started by srun, as jax._src.clusters.slurm_cluster reads it (plus the step id,
# which only srun sets: a batch script or an ssh session inside an allocation has no step).
_SLURM_STEP_VARS = ("SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
                    "SLURM_LOCALID")


@dataclasses.dataclass(frozen=True)
class Plan:
    """How this process joins the job: the mode and the keyword arguments of `jax.distributed.initialize`."""

    mode: str  # "single", "explicit", "slurm" or "tpu"
    init_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    reason: str = ""

    @property
    def multi_process(self) -> bool:
        return self.mode != "single"


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, initialization_timeout: int = 300) -> bool:
    """Calls `jax.distributed.initialize` when this is one process of several; True when it did (or had).

    Must run before anything touches JAX devices (jax.devices(), a computation, config validation).
    """
    if jax.distributed.is_initialized():
        return True
    plan = plan_distributed(coordinator_address, num_processes, process_id)
    if not plan.multi_process:
        log.info("single process (%s)", plan.reason)
        return False
    _use_cpu_collectives()
    log.info("joining a multi-process job: %s (%s)", plan.mode, plan.reason)
    jax.distributed.initialize(**plan.init_kwargs, initialization_timeout=initialization_timeout)
    log.info("process %d of %d (%s), %d local devices of %d: %s", jax.process_index(), jax.process_count(),
             plan.mode, jax.local_device_count(), jax.device_count(),
             ", ".join(str(d) for d in jax.local_devices()))
    return True


def plan_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None, environ: Mapping[str, str] | None = None) -> Plan:
    """Decides the mode from the flags (which override VLMJAX_* variables), then SLURM, then Cloud TPU."""
    env = os.environ if environ is None else environ
    explicit = _explicit_plan(coordinator_address, num_processes, process_id, env)
    if explicit is not None:
        return explicit
    slurm = _slurm_plan(env)
    if slurm is not None:
        return slurm
    tpu = _cloud_tpu_plan()
    if tpu is not None:
        return tpu
    return Plan("single", reason="no --coordinator_address, SLURM step or multi-host Cloud TPU")


def _explicit_plan(coordinator_address: str | None, num_processes: int | None, process_id: int | None,
                   env: Mapping[str, str]) -> Plan | None:
    """The plan from the three flags (or their variables); None when none is given, ConfigError when some."""
    values = {"--coordinator_address": (coordinator_address, COORDINATOR_ENV),
              "--num_processes": (num_processes, NUM_PROCESSES_ENV),
              "--process_id": (process_id, PROCESS_ID_ENV)}
    got = {flag: value if value is not None else (env.get(var) or None)
           for flag, (value, var) in values.items()}
    missing = [f"{flag} (or {values[flag][1]})" for flag, value in got.items() if value is None]
    if len(missing) == 3:
        return None
    if missing:
        given = ", ".join(flag for flag, value in got.items() if value is not None)
        raise ConfigError(f"a multi-process run needs all of --coordinator_address, --num_processes and "
                          f"--process_id: got {given} but not {', '.join(missing)}")
    address = str(got["--coordinator_address"])
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--coordinator_address must be HOST:PORT (process 0's address), got {address!r}")
    count = _as_int("--num_processes", NUM_PROCESSES_ENV, got["--num_processes"])
    index = _as_int("--process_id", PROCESS_ID_ENV, got["--process_id"])
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"--process_id must be in [0, --num_processes) and --num_processes >= 1, got "
                          f"process_id={index}, num_processes={count}")
    if count == 1:
        return Plan("single", reason="--num_processes=1")
    # "deactivate": the flags are the whole truth, no SLURM or TPU variable fills in anything else.
    return Plan("explicit", {"coordinator_address": address, "num_processes": count, "process_id": index,
                             "cluster_detection_method": "deactivate"},
                reason=f"coordinator {address}")


def _as_int(flag: str, var: str, value: int | str | None) -> int:
    try:
        return int(value)  # type: ignore[arg-type]
    except ValueError:
        raise ConfigError(f"{flag} (or {var}) must be an integer, got {value!r}") from None


def _slurm_plan(env: Mapping[str, str]) -> Plan | None:
    """A plan for a task of an `srun` step with more than one task, else None."""
    if not all(env.get(var) for var in _SLURM_STEP_VARS):
        return None
    tasks = _int_or_zero(env.get("SLURM_STEP_NUM_TASKS")) or _int_or_zero(env["SLURM_NTASKS"])
    if tasks < 2:
        return None
    kwargs: dict[str, Any] = {"cluster_detection_method": "slurm"}
    nodes = _int_or_zero(env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_NNODES"))
    per_node = nodes == tasks
    devices = _slurm_local_device_ids(env, per_node)
    if devices is not None:
        kwargs["local_device_ids"] = devices
    return Plan("slurm", kwargs, reason=f"SLURM job {env['SLURM_JOB_ID']} step {env['SLURM_STEP_ID']}: "
                                        f"{tasks} tasks on {nodes or '?'} nodes")


def _int_or_zero(value: str | None) -> int:
    """An integer SLURM variable, 0 when absent or not a plain integer (heterogeneous jobs list several)."""
    return int(value) if value and value.isdigit() else 0


def _slurm_local_device_ids(env: Mapping[str, str], per_node: bool) -> list[int] | None:
    """The GPUs this task drives when JAX's default ([SLURM_LOCALID] of the node's GPUs) is wrong, else None.

    One task per node drives every GPU it sees; a task that sees a single GPU (srun --gpus-per-task=1 or
    --gpu-bind) drives that one, which CUDA numbers 0. JAX_LOCAL_DEVICE_IDS, when set, wins (JAX reads it).
    """
    if env.get("JAX_LOCAL_DEVICE_IDS"):
        return None
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        count = len([d for d in visible.split(",") if d.strip()])
    else:
        count = _int_or_zero(env.get("SLURM_GPUS_ON_NODE"))
    if per_node and count:
        return list(range(count))
    if not per_node and count == 1:
        return [0]
    return None


def _cloud_tpu_plan() -> Plan | None:
    """A plan when this is a Cloud TPU VM that is one worker of several, else None (single host included).

    Uses JAX's own detection (GKE: TPU_WORKER_HOSTNAMES; GCE: the VM metadata's worker-network-endpoints,
    times MEGASCALE_NUM_SLICES), so the count is the one `jax.distributed.initialize()` will use.
    """
    from jax._src.clusters import cloud_tpu_cluster as tpu

    if not tpu.running_in_cloud_tpu_vm:
        return None
    for cluster in (tpu.GkeTpuCluster, tpu.GceTpuCluster):
        if cluster.is_env_present():
            workers = cluster.get_process_count()
            if workers < 2:
                return None
            return Plan("tpu", {"cluster_detection_method": cluster.name},
                        reason=f"Cloud TPU ({cluster.name}) with {workers} workers")
    return None


def _use_cpu_collectives() -> None:
    """Cross-process collectives on CPU devices need gloo (JAX 0.10's default; older releases had none)."""
    if jax.config.jax_cpu_collectives_implementation is None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")

