"""Multi-process start-up: the mode decision (explicit, SLURM, Cloud TPU, single), the launchers and a real
2-process job on CPU."""

import os
import shlex
import socket
import subprocess
import sys
import textwrap

import jax
import pytest
from jax._src.clusters import cloud_tpu_cluster

from tests.conftest import REPO
from vlmjax.cli import initialize_processes, parse_args
from vlmjax.errors import ConfigError
from vlmjax.parallel import distributed
from vlmjax.parallel.distributed import initialize_distributed, plan_distributed

_CLUSTER_PREFIXES = ("SLURM_", "VLMJAX_", "TPU_", "MEGASCALE_", "JAX_COORDINATOR", "JAX_LOCAL_DEVICE_IDS",
                     "CUDA_VISIBLE_DEVICES")


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """A plain environment and a stubbed `jax.distributed.initialize` that records its keyword arguments."""
    for key in list(os.environ):
        if key.startswith(_CLUSTER_PREFIXES):
            monkeypatch.delenv(key)
    recorded: list[dict] = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: recorded.append(kwargs))
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    return recorded


def _slurm_env(monkeypatch: pytest.MonkeyPatch, tasks: int, nodes: int = 1, procid: int = 0,
               step: bool = True) -> None:
    env = {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": str(tasks), "SLURM_PROCID": str(procid),
           "SLURM_LOCALID": str(procid % (tasks // nodes)), "SLURM_NNODES": str(nodes),
           "SLURM_JOB_NODELIST": "gpu[001-002]"}
    if step:  # what srun adds for the tasks of a step
        env.update(SLURM_STEP_ID="0", SLURM_STEP_NODELIST="gpu[001-002]", SLURM_STEP_NUM_TASKS=str(tasks),
                   SLURM_STEP_NUM_NODES=str(nodes))
    for key, value in env.items():
        monkeypatch.setenv(key, value)


def test_plain_process_does_not_initialize(calls):
    assert initialize_distributed() is False
    assert calls == []


def test_explicit_flags_initialize_with_exactly_those(calls):
    assert initialize_distributed("10.0.0.1:1234", 4, 3) is True
    assert calls == [{"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 3,
                      "cluster_detection_method": "deactivate", "initialization_timeout": 300}]


def test_explicit_from_cli_flags_and_environment(calls, monkeypatch):
    monkeypatch.setenv("VLMJAX_COORDINATOR_ADDRESS", "host:99")
    monkeypatch.setenv("VLMJAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("VLMJAX_PROCESS_ID", "1")
    args, _ = parse_args(["--workdir", "w", "--process_id", "0"], "test", lambda parser: None)
    assert initialize_processes(args) is True  # the flag wins over VLMJAX_PROCESS_ID
    assert calls[0]["coordinator_address"] == "host:99"
    assert (calls[0]["num_processes"], calls[0]["process_id"]) == (2, 0)


@pytest.mark.parametrize("given,missing", [
    (dict(coordinator_address="h:1"), ["--num_processes", "--process_id"]),
    (dict(num_processes=2, process_id=0), ["--coordinator_address"]),
    (dict(coordinator_address="h:1", num_processes=2), ["--process_id"]),
])
def test_partial_flags_name_what_is_missing(calls, given, missing):
    with pytest.raises(ConfigError) as error:
        initialize_distributed(**given)
    for flag in missing:
        assert flag in str(error.value)
    assert calls == []


@pytest.mark.parametrize("address,count,index,message", [
    ("10.0.0.1", 2, 0, "HOST:PORT"),
    ("h:1", 2, 2, "--process_id must be in"),
    ("h:1", 0, 0, "--num_processes >= 1"),
])
def test_bad_explicit_values(calls, address, count, index, message):
    with pytest.raises(ConfigError, match=message):
        initialize_distributed(address, count, index)


def test_bad_environment_value(calls, monkeypatch):
    monkeypatch.setenv("VLMJAX_NUM_PROCESSES", "two")
    with pytest.raises(ConfigError, match="VLMJAX_NUM_PROCESSES.*integer"):
        initialize_distributed("h:1", process_id=0)


def test_one_explicit_process_is_a_single_process(calls):
    assert initialize_distributed("h:1", 1, 0) is False
    assert calls == []


def test_slurm_one_task_does_not_initialize(calls, monkeypatch):
    _slurm_env(monkeypatch, tasks=1)
    assert initialize_distributed() is False
    assert calls == []


def test_slurm_batch_script_without_a_step_does_not_initialize(calls, monkeypatch):
    _slurm_env(monkeypatch, tasks=16, nodes=2, step=False)  # the batch script or an ssh session
    assert initialize_distributed() is False
    assert calls == []


def test_slurm_step_of_two_tasks_lets_jax_detect(calls, monkeypatch):
    _slurm_env(monkeypatch, tasks=2, procid=1)
    assert initialize_distributed() is True
    assert calls == [{"cluster_detection_method": "slurm", "initialization_timeout": 300}]


def test_slurm_one_process_per_node_drives_all_its_gpus(calls, monkeypatch):
    _slurm_env(monkeypatch, tasks=2, nodes=2, procid=1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    assert initialize_distributed() is True
    assert calls[0]["local_device_ids"] == [0, 1, 2, 3]


def test_slurm_task_that_sees_one_gpu_drives_it(calls, monkeypatch):
    _slurm_env(monkeypatch, tasks=8, procid=5)  # srun --gpus-per-task=1: CUDA numbers its GPU 0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    assert initialize_distributed() is True
    assert calls[0]["local_device_ids"] == [0]


def test_explicit_flags_win_over_slurm(calls, monkeypatch):
    _slurm_env(monkeypatch, tasks=2)
    assert plan_distributed("h:1", 3, 2).mode == "explicit"


def _cloud_tpu(monkeypatch: pytest.MonkeyPatch, metadata: dict[str, str]) -> None:
    """A Cloud TPU VM whose metadata server answers from `metadata` (no network)."""
    monkeypatch.setattr(cloud_tpu_cluster, "running_in_cloud_tpu_vm", True)
    monkeypatch.delenv("TPU_SKIP_MDS_QUERY", raising=False)  # set by jax's import on a machine without TPUs

    def get_metadata(key: str) -> tuple[str, int]:
        return (metadata[key], 200) if key in metadata else ("", 404)
    monkeypatch.setattr(cloud_tpu_cluster, "get_metadata", get_metadata)


def test_cloud_tpu_pod_slice_initializes(calls, monkeypatch):
    endpoints = ",".join(f"w{i}:{i}:10.0.0.{i + 2}" for i in range(4))  # name:id:ip, as GCE has them
    _cloud_tpu(monkeypatch, {"agent-worker-number": "2", "tpu-env": "ZONE: 'us-central2-b'",
                             "worker-network-endpoints": endpoints})
    assert initialize_distributed() is True
    assert calls == [{"cluster_detection_method": "gcetpu", "initialization_timeout": 300}]


def test_single_host_tpu_vm_does_not_initialize(calls, monkeypatch):
    _cloud_tpu(monkeypatch, {"agent-worker-number": "0", "tpu-env": "",
                             "worker-network-endpoints": "w0:0:10.0.0.2"})
    assert initialize_distributed() is False
    assert calls == []


def test_gke_tpu_slice_initializes_without_metadata(calls, monkeypatch):
    _cloud_tpu(monkeypatch, {})
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "host-0,host-1")
    monkeypatch.setenv("TPU_WORKER_ID", "1")
    monkeypatch.setenv("MEGASCALE_NUM_SLICES", "1")
    assert plan_distributed().init_kwargs == {"cluster_detection_method": "gketpu"}


def test_not_a_tpu_vm_never_asks_the_metadata_server(calls, monkeypatch):
    def no_network(key: str) -> tuple[str, int]:
        raise AssertionError(f"metadata query for {key}")
    monkeypatch.setattr(cloud_tpu_cluster, "get_metadata", no_network)
    assert plan_distributed().mode == "single"


LAUNCHERS = ["launch/local.sh", "launch/tpu_pod.sh", "launch/slurm_gpu.sbatch", "launch/setup.sh",
             "launch/demo.sh", "launch/test.sh"]


@pytest.mark.parametrize("script", LAUNCHERS)
def test_launcher_parses(script):
    subprocess.run(["bash", "-n", os.path.join(REPO, script)], check=True)


def test_tpu_pod_dry_run_prints_the_gcloud_commands():
    env = {**os.environ, "DRY_RUN": "1", "TPU_NAME": "my-tpu", "ZONE": "us-central2-b",
           "ACCELERATOR_TYPE": "v4-32", "PATH": "/usr/bin:/bin"}  # gcloud is not needed for a dry run
    overrides = ["--config.train.batch_size=1024", "--config.data.dir=/mnt/data dir"]
    result = subprocess.run(["bash", "launch/tpu_pod.sh", "create", "setup", "train", "delete",
                             "configs/demo/clip_fashion_mnist.py", "/mnt/runs/clip", *overrides],
                            cwd=REPO, env=env, capture_output=True, text=True, check=True, timeout=60)
    commands = [shlex.split(line[2:]) for line in result.stdout.splitlines() if line.startswith("+ ")]
    gcloud = [c[4:] for c in commands if c[:4] == ["gcloud", "compute", "tpus", "tpu-vm"]]
    assert [c[0] for c in gcloud] == ["create", "scp", "ssh", "ssh", "delete"]
    create, scp, setup, train, delete = gcloud
    assert create == ["create", "my-tpu", "--zone=us-central2-b", "--accelerator-type=v4-32",
                      "--version=tpu-ubuntu2204-base"]
    assert "--worker=all" in scp and scp[2] == "my-tpu:vlmjax.tar.gz"
    assert any(c[:2] == ["git", "archive"] for c in commands)
    for ssh in (setup, train):
        assert ssh[1] == "my-tpu" and "--worker=all" in ssh
    setup_command = next(a for a in setup if a.startswith("--command="))
    assert "SETUP_EXTRAS=tpu bash launch/setup.sh" in setup_command
    # The remote shell sees the training command with every argument intact.
    train_command = next(a for a in train if a.startswith("--command=")).removeprefix("--command=")
    # It runs inside the restart loop: status 75 (stopped with a checkpoint) starts it again.
    segment = next(s for s in train_command.split("; ") if s.startswith(".venv/bin/python"))
    remote = shlex.split(segment.removesuffix(" || status=$?"))
    assert "[ $status -eq 75 ] || exit $status" in train_command
    assert remote == [".venv/bin/python", "-m", "vlmjax.train", "--config",
                      "configs/demo/clip_fashion_mnist.py", "--workdir", "/mnt/runs/clip", *overrides]
    assert delete == ["delete", "my-tpu", "--zone=us-central2-b", "--quiet"]


def test_tpu_pod_needs_a_zone():
    env = {**os.environ, "DRY_RUN": "1", "TPU_NAME": "my-tpu"}
    env.pop("ZONE", None)
    result = subprocess.run(["bash", "launch/tpu_pod.sh", "create"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0 and "ZONE" in result.stderr


_CHILD = textwrap.dedent("""
    import sys

    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.experimental import multihost_utils
    from jax.sharding import NamedSharding, PartitionSpec as P

    from vlmjax.parallel.distributed import initialize_distributed

    address, index = sys.argv[1], int(sys.argv[2])
    assert initialize_distributed(address, 2, index, initialization_timeout=60)
    assert (jax.process_count(), jax.device_count(), jax.local_device_count()) == (2, 4, 2)
    gathered = multihost_utils.process_allgather(np.array([index]))
    mesh = jax.make_mesh((4,), ("d",), devices=jax.devices())
    x = jax.make_array_from_process_local_data(NamedSharding(mesh, P("d")),
                                               np.arange(2, dtype=np.float32) + 2 * index + 1, (4,))
    psum = jax.jit(jax.shard_map(lambda b: jax.lax.psum(b, "d"), mesh=mesh, in_specs=P("d"), out_specs=P()))
    total = float(np.asarray(psum(x).addressable_data(0)).reshape(-1)[0])
    print("RESULT", index, gathered.ravel().tolist(), total, flush=True)
""")


def test_two_processes_on_cpu_join_and_reduce(tmp_path):
    """A real job on 127.0.0.1: 2 processes x 2 CPU devices, an all-gather and a psum across processes."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    procs = [subprocess.Popen([sys.executable, str(script), f"127.0.0.1:{port}", str(i)], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    try:
        outputs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i, (p, out) in enumerate(zip(procs, outputs, strict=True)):
        assert p.returncode == 0, out
        assert f"RESULT {i} [0, 1] 10.0" in out, out


def test_module_has_no_device_side_effects_on_import():
    # Importing the module (as the CLI does before parsing) must not start a JAX backend.
    code = ("import vlmjax.cli, vlmjax.parallel.distributed; from jax._src import xla_bridge; "
            "assert not xla_bridge.backends_are_initialized()")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


def test_plan_reason_is_logged(calls, caplog):
    with caplog.at_level("INFO", logger=distributed.__name__):
        initialize_distributed()
    assert "single process" in caplog.text
