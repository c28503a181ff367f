"""Submits a study to SLURM as one job array: array task i is run i, a multi-process JAX job of
`launch/slurm_gpu.sbatch` (which requeues it on preemption and resumes from its checkpoint).

Each run's command line is stored NUL-separated in DIR/slurm/<i>.args, which the sbatch script
reads in `--study DIR` mode; the array lists only the runs not finished yet, so submitting the
same study again continues it. SLURM's own output of task i goes to DIR/slurm/<i>.out, the
run's output to RUN_DIR/slurm.log.
"""

import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping

from vlmjax.errors import VlmjaxError
from vlmjax.study.spec import Run

SBATCH_SCRIPT = os.path.join("launch", "slurm_gpu.sbatch")
LOG_NAME = "slurm.log"


def write_args(directory: str, run: Run, config_path: str, run_dir: str) -> str:
    """DIR/slurm/<index>.args: CONFIG, WORKDIR and the overrides, each ended by a NUL byte."""
    folder = os.path.join(directory, "slurm")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{run.index}.args")
    fields = [config_path, run_dir, *run.override_args()]
    if any("\0" in f for f in fields):
        raise VlmjaxError(f"run {run.name}: a config value holds a NUL byte, which a command line cannot")
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(b"".join(field.encode() + b"\0" for field in fields))
    os.replace(tmp, path)
    return path


def array_spec(indices: list[int], max_parallel: int = 0) -> str:
    """SLURM's --array value: "0-3,7" style ranges, with "%N" to run at most N at once."""
    ranges, start = [], None
    for i, index in enumerate(indices):
        if start is None:
            start = index
        if i + 1 == len(indices) or indices[i + 1] != index + 1:
            ranges.append(str(start) if start == index else f"{start}-{index}")
            start = None
    return ",".join(ranges) + (f"%{max_parallel}" if max_parallel > 0 else "")


def job_comment(directory: str) -> str:
    """The comment that marks a study's jobs, so that a second submission can find the first."""
    return f"vlmjax-study:{directory}"


def sbatch_command(repo: str, directory: str, indices: list[int], name: str,
                   sbatch_args: list[str], max_parallel: int = 0) -> list[str]:
    """The sbatch command line of the study's array (extra sbatch arguments come last, so they win)."""
    return ["sbatch", "--parsable", f"--array={array_spec(indices, max_parallel)}",
            f"--job-name={name}", f"--comment={job_comment(directory)}",
            f"--output={os.path.join(directory, 'slurm', '%a.out')}",
            *sbatch_args, os.path.join(repo, SBATCH_SCRIPT), "--study", directory]


def queued_jobs(directory: str, env: Mapping[str, str] | None = None) -> list[str]:
    """Ids of this study's jobs still queued or running (squeue), [] when none or squeue fails."""
    done = subprocess.run(["squeue", "-h", "-o", "%i %k"], env=dict(os.environ if env is None else env),
                          capture_output=True, text=True)
    comment = job_comment(directory)
    return [line.split(" ", 1)[0] for line in done.stdout.splitlines()
            if done.returncode == 0 and line.partition(" ")[2].strip() == comment]


def require_sbatch(env: Mapping[str, str] | None = None) -> None:
    """VlmjaxError (one line) when SLURM's sbatch is not on the PATH."""
    if shutil.which("sbatch", path=(env or os.environ).get("PATH")) is None:
        raise VlmjaxError("--slurm needs SLURM's `sbatch` on the PATH and it is not there; run this "
                          "on a login node of the cluster (or drop --slurm to run here)")


def submit(repo: str, directory: str, indices: list[int], name: str, sbatch_args: list[str],
           max_parallel: int = 0, env: Mapping[str, str] | None = None) -> str:
    """Submits the array and returns its job id (VlmjaxError, one line, when sbatch is missing or fails)."""
    require_sbatch(env)
    queued = queued_jobs(directory, env)
    if queued:
        raise VlmjaxError(f"job(s) {', '.join(queued)} of this study are still queued or running; "
                          "submitting again would run their runs twice: wait for them (or scancel them)")
    command = sbatch_command(repo, directory, indices, name, sbatch_args, max_parallel)
    run_env = dict(os.environ if env is None else env)
    run_env["VLMJAX_ROOT"] = repo  # the batch script runs from SLURM's spool: find the checkout
    done = subprocess.run(command, env=run_env, capture_output=True, text=True)
    if done.returncode != 0:
        message = (done.stderr.strip() or done.stdout.strip()).splitlines()
        raise VlmjaxError(f"sbatch failed ({message[-1] if message else f'status {done.returncode}'}): "
                          f"{shlex.join(command)}")
    return done.stdout.strip().split(";")[0]
