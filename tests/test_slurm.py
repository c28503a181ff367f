"""`launch/slurm_gpu.sbatch` under a real SLURM (a one-node cluster on 127.0.0.1, see
tests/slurm_cluster.py), on CPU with 2 tasks: the two processes form one JAX job that trains;
the time-limit notice (USR1 to the batch script) and `scontrol requeue` each make both tasks
checkpoint the same step and exit 75, the job is requeued and resumes, and it ends with the
parameters of an uninterrupted job bit for bit; a study submitted as a job array completes."""

import os
import re
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO
from tests.launch_helpers import (
    assert_same_params,
    cpu_env,
    latest,
    logged_steps,
    no_evals_config,
    wait_until,
)
from tests.slurm_cluster import SlurmCluster, SlurmUnavailableError

STEPS = 100  # with a row every step the stops (a SLURM signal takes ~1 s) land mid-run on a fast machine
CPU_JOB = ["--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--gpus-per-node=0"]
DONE = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    try:
        # 4 CPUs or more: the two 2-task jobs (and the two runs of the study) run side by side.
        cpus = max(4, os.cpu_count() or 1)
        cluster = SlurmCluster(str(tmp_path_factory.mktemp("slurm")), cpus=cpus).start()
    except SlurmUnavailableError as e:
        pytest.skip(f"no SLURM: {e}")
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def setup(tmp_path_factory, synthetic_data_dir):
    tmp = tmp_path_factory.mktemp("slurm_runs")
    return str(tmp), no_evals_config(str(tmp)), cpu_env(str(tmp / "cache"))


def _submit(cluster, env, config, workdir, data_dir, *extra) -> str:
    done = cluster.run("sbatch", "--parsable", *CPU_JOB, f"--output={workdir}.out", *extra,
                       os.path.join(REPO, "launch", "slurm_gpu.sbatch"), config, workdir,
                       f"--config.data.dir={data_dir}", f"--config.train.num_steps={STEPS}",
                       "--config.train.checkpoint_every=50", "--config.train.log_every=1",
                       "--config.optimizer.schedule=constant", env=env, cwd=REPO)
    return done.stdout.strip()


def _wait_job(cluster, job, timeout: float = 600) -> str:
    wait_until(lambda: cluster.job_state(job) in DONE, timeout, f"job {job} to end")
    return cluster.job_state(job)


def _restarts(cluster, job) -> int:
    out = cluster.run("scontrol", "-o", "show", "job", job).stdout
    return int(re.search(r"Restarts=(\d+)", out).group(1))


@pytest.fixture(scope="module")
def jobs(cluster, setup, synthetic_data_dir):
    """An uninterrupted job and one stopped twice: by the time-limit notice, then by a requeue."""
    tmp, config, env = setup
    reference, interrupted = os.path.join(tmp, "reference"), os.path.join(tmp, "interrupted")
    ref_job = _submit(cluster, env, config, reference, synthetic_data_dir)
    job = _submit(cluster, env, config, interrupted, synthetic_data_dir)
    running = lambda: cluster.job_state(job) not in DONE  # noqa: E731
    # 1. SLURM's USR1 before the time limit (--signal=B:USR1@300) goes to the batch shell.
    wait_until(lambda: logged_steps(interrupted), 600, "the first logged step", running)
    cluster.run("scancel", "--batch", "--signal=USR1", job)
    wait_until(lambda: _restarts(cluster, job) >= 1, 300, "the first requeue", running)
    first = latest(interrupted)
    # 2. An administrator's (or the scheduler's) requeue, once training has gone on.
    wait_until(lambda: logged_steps(interrupted) and max(logged_steps(interrupted)) > first + 1,
               600, "training after the first restart", running)
    cluster.run("scontrol", "requeue", job)
    states = _wait_job(cluster, ref_job), _wait_job(cluster, job)
    with open(f"{interrupted}.out") as f:
        log = f.read()
    with open(f"{reference}.out") as f:
        reference_log = f.read()
    return reference, interrupted, states, _restarts(cluster, job), log, reference_log


def test_two_tasks_form_one_jax_job_that_trains(jobs):
    reference, _, states, _, _, reference_log = jobs
    assert states[0] == "COMPLETED", reference_log[-3000:]
    for i in range(2):
        assert re.search(rf"process {i} of 2 \(slurm\), 1 local devices of 2", reference_log), reference_log
    assert "mesh {'data': 2, 'fsdp': 1, 'tensor': 1} over 2 devices (cpu)" in reference_log
    assert latest(reference) == STEPS and logged_steps(reference) == list(range(1, STEPS + 1))


def test_notice_and_requeue_checkpoint_both_tasks_and_the_job_resumes_bit_identically(jobs):
    reference, interrupted, states, restarts, log, _ = jobs
    assert states[1] == "COMPLETED", log[-3000:]
    assert restarts == 2
    assert "time limit near: asking job" in log
    # Each stop: both processes wrote the checkpoint of one and the same step and exited 75.
    stops = [int(s) for s in re.findall(r"stopped: .*wrote the checkpoint of step (\d+)", log)]
    assert len(stops) == 4 and stops[0] == stops[1] and stops[2] == stops[3], stops
    assert 0 < stops[0] < stops[2] < STEPS
    assert "Exited with exit code 75" in log
    assert not re.search(r"task \d: Exited with exit code (?!75)\d+", log), log[-3000:]
    for step in (stops[0], stops[2]):
        assert len(re.findall(rf"resumed from step {step}\b", log)) == 2
    assert "(restart 1)" in log and "(restart 2)" in log
    assert latest(interrupted) == STEPS
    assert_same_params(interrupted, reference, STEPS)


def test_a_study_submitted_as_a_job_array_completes(cluster, setup, synthetic_data_dir):
    tmp, config, env = setup
    env = cluster.env(env)
    study = os.path.join(tmp, "study.py")
    with open(study, "w") as f:
        f.write("def get_study():\n    return " + repr({
            "config": config, "overrides": {"data.dir": synthetic_data_dir, "train.num_steps": 20,
                                            "train.checkpoint_every": 10},
            "axes": {"seed": {"seed": [0, 1]}}}) + "\n")
    directory = os.path.join(tmp, "study")
    args = [sys.executable, "-m", "vlmjax.study", "--config", study, "--workdir", directory,
            "--devices", "2", "--processes", "2"]
    done = subprocess.run([*args, "--slurm", "--sbatch_args", " ".join(CPU_JOB)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    array = re.search(r"submitted job array (\d+): 2 of 2 runs \(tasks 0, 1\)", done.stdout).group(1)
    twice = subprocess.run([*args, "--slurm", "--sbatch_args", " ".join(CPU_JOB)], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=300)
    assert twice.returncode == 2 and "of this study are still queued or running" in twice.stderr, twice.stderr
    deadline = time.time() + 600
    while time.time() < deadline and cluster.run("squeue", "-h", "-j", array, check=False).stdout.strip():
        time.sleep(1)
    status = subprocess.run([*args, "--dry_run"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)
    assert status.returncode == 0, status.stderr
    assert "2 runs in" in status.stdout and "(2 finished)" in status.stdout, status.stdout
    for seed in (0, 1):
        run_dir = os.path.join(directory, f"seed={seed}")
        with open(os.path.join(run_dir, "slurm.log")) as f:
            log = f.read()
        assert "process 1 of 2 (slurm)" in log and latest(run_dir) == 20, log[-3000:]
        with open(os.path.join(directory, "slurm", f"{seed}.out")) as f:
            assert f"array task {seed}" in f.read()
    # Submitting again finds nothing left to do.
    again = subprocess.run([*args, "--slurm", "--sbatch_args", " ".join(CPU_JOB)], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "all 2 runs" in again.stdout and "nothing to submit" in again.stdout
