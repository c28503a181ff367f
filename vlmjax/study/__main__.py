"""`python -m vlmjax.study --config STUDY.py[:arg] --workdir DIR [--config.k=v ...]`: runs a study.

The study's runs (a base config x axes, see vlmjax/study/spec.py) are ordinary runs in
DIR/<run-name>/. All are built and validated first (every problem listed, nothing started
otherwise); DIR/study.json records the study, and a DIR made by another study is refused.
Finished runs are skipped, interrupted ones resume. Where they run:
  (default)  here, one after another (`launch/local.sh`; --processes N: N processes each);
  --slurm    a SLURM job array, one task per run (`launch/slurm_gpu.sbatch`; --sbatch_args);
  --tpu      prints the `launch/tpu_pod.sh train` commands of a Cloud TPU slice.
--dry_run lists the runs, their state and command, and starts nothing.
"""

import argparse
import os
import shlex
import subprocess
import sys

import vlmjax
from vlmjax.cli import run_main
from vlmjax.errors import ConfigError, VlmjaxError
from vlmjax.study.check import check_runs, resolve_config_path
from vlmjax.study.local import (
    RESUMABLE_EXIT_STATUS,
    LocalRunner,
    StudyInterruptedError,
    last_error,
    run_command,
)
from vlmjax.study.slurm import require_sbatch, sbatch_command, submit, write_args
from vlmjax.study.spec import Run, load_study
from vlmjax.study.state import FINISHED, claim_directory, lock_directory, run_state
from vlmjax.study.tpu import tpu_commands

REPO = os.path.dirname(os.path.dirname(os.path.abspath(vlmjax.__file__)))


def parse(argv: list[str]) -> tuple[argparse.Namespace, dict[str, str]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--config", required=True, help="study file, path.py or path.py:arg")
    parser.add_argument("--workdir", required=True, help="study directory (one run directory per run)")
    parser.add_argument("--dry_run", action="store_true", help="list the runs; start nothing")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--slurm", action="store_true", help="submit a SLURM job array")
    where.add_argument("--tpu", action="store_true", help="print the Cloud TPU launch commands")
    parser.add_argument("--devices", type=int, default=0,
                        help="devices of each run's job, for validation (default: counted here; "
                             "required with --slurm, --tpu and --processes > 1)")
    parser.add_argument("--processes", type=int, default=1, help="processes of each run's job")
    parser.add_argument("--sbatch_args", default="", help="extra sbatch arguments, e.g. "
                        "'--nodes=4 --partition=gpu' (with --slurm)")
    parser.add_argument("--max_parallel", type=int, default=0,
                        help="with --slurm: at most this many runs at once (0: no limit)")
    args, rest = parser.parse_known_args(argv)
    overrides = {}
    for item in rest:
        if not item.startswith("--config.") or "=" not in item:
            parser.error(f"unrecognized argument {item!r}; overrides for every run look like "
                         "--config.data.dir=/data")
        key, _, value = item[len("--config."):].partition("=")
        overrides[key] = value
    if args.processes < 1 or args.devices < 0 or args.max_parallel < 0:
        parser.error("--processes must be >= 1, --devices and --max_parallel >= 0")
    return args, overrides


def probe_devices(env: dict) -> int:
    """jax.device_count() in a child process with the runs' environment (this process must not
    take the accelerator: on a GPU, JAX would reserve most of its memory for the whole study)."""
    python = os.path.join(REPO, ".venv", "bin", "python")
    done = subprocess.run([python if os.path.exists(python) else sys.executable, "-c",
                           "import jax; print(jax.device_count())"],
                          env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise VlmjaxError(f"could not count this machine's JAX devices ({done.stderr.strip()[-300:]}); "
                          "pass --devices N")
    return int(done.stdout.split()[-1])


def main(argv: list[str] | None = None) -> int:
    args, extra = parse(sys.argv[1:] if argv is None else argv)
    if args.slurm and not args.dry_run:
        require_sbatch()
    study = load_study(args.config)
    axis_keys = {key: axis.name for axis in study.axes for key in axis.keys}
    clashes = [f"--config.{k} (axis {axis_keys[k]!r} sets it)" for k in extra if k in axis_keys]
    if clashes:
        raise ConfigError(f"{', '.join(clashes)}: an override for every run cannot set an axis key; "
                          "drop it or change the study")
    runs = study.runs(extra)
    directory = os.path.abspath(args.workdir)
    roots = [os.getcwd(), REPO]
    if args.slurm or args.tpu or args.processes > 1:
        if not args.devices:
            raise ConfigError(f"{'--slurm' if args.slurm else '--tpu' if args.tpu else '--processes'} "
                              "needs --devices N: the number of devices each run's job has (to "
                              "validate mesh and batch sizes before anything starts)")
        devices = args.devices
    else:
        devices = args.devices or probe_devices(dict(os.environ))
    configs = check_runs(runs, roots, devices, args.processes)
    paths = {run.name: resolve_config_path(run.config, roots) for run in runs}
    run_dirs = {run.name: os.path.join(directory, run.name) for run in runs}
    states = {run.name: run_state(run_dirs[run.name], configs[run.name].train.num_steps,
                                  bool(configs[run.name].evals)) for run in runs}
    pending = [run for run in runs if states[run.name] != FINISHED]
    name = "vlmjax-study-" + os.path.splitext(os.path.basename(args.config.partition(":")[0]))[0]
    sbatch_args = shlex.split(args.sbatch_args)

    if args.dry_run:
        claim_directory(directory, study.record(runs), write=False)  # another study's: refused
        print(f"{len(runs)} runs in {directory} ({len(runs) - len(pending)} finished), "
              f"valid for {devices} devices:")
        for run in runs:
            print(f"  {run.index:3d}  {states[run.name]:<11}  {run.name}")
        if args.slurm and pending:
            print("would submit: " + shlex.join(sbatch_command(
                REPO, directory, [r.index for r in pending], name, sbatch_args, args.max_parallel)))
        elif args.tpu:
            print("\n".join(tpu_commands(REPO, [(r, paths[r.name], run_dirs[r.name]) for r in pending])))
        elif pending:
            run = pending[0]
            print(f"each runs as, e.g. {run.name}:\n  "
                  + shlex.join(run_command(REPO, run, paths[run.name], run_dirs[run.name])))
        return 0

    if args.tpu:
        # DIR is the workers' storage, often not mounted here: record the study if it can be.
        try:
            claim_directory(directory, study.record(runs))
            recorded = f"# {directory}/study.json records the study (vlmjax.report reads it)"
        except OSError as e:
            recorded = (f"# {directory} is not writable here ({e.strerror}): run this command where it "
                        "is mounted to write its study.json, which vlmjax.report reads")
        print(recorded)
        print(f"# {len(pending)} of {len(runs)} runs to train (finished ones as seen from here are left "
              "out); set TPU_NAME and ZONE, then run these one after another from this checkout:")
        print("\n".join(tpu_commands(REPO, [(r, paths[r.name], run_dirs[r.name]) for r in pending])))
        return 0
    claim_directory(directory, study.record(runs))
    if args.slurm:
        for run in runs:
            write_args(directory, run, paths[run.name], run_dirs[run.name])
        if not pending:
            print(f"all {len(runs)} runs of {directory} are finished; nothing to submit")
            return 0
        job = submit(REPO, directory, [r.index for r in pending], name, sbatch_args, args.max_parallel)
        print(f"submitted job array {job}: {len(pending)} of {len(runs)} runs (tasks "
              f"{', '.join(str(r.index) for r in pending)}); run output in {directory}/<run>/slurm.log; "
              f"`python -m vlmjax.study ... --dry_run` shows their state")
        return 0
    with lock_directory(directory):
        return run_locally(runs, pending, paths, run_dirs, configs, args.processes)


def run_locally(runs: list[Run], pending: list[Run], paths: dict, run_dirs: dict, configs: dict,
                processes: int) -> int:
    """Runs the pending runs in order; failures are reported and the rest go on."""
    runner = LocalRunner(REPO, processes)
    failed = []
    names = {run.name for run in pending}
    for run in runs:
        if run.name not in names:
            print(f"[{run.index + 1}/{len(runs)}] {run.name}: finished already", flush=True)
            continue
        print(f"[{run.index + 1}/{len(runs)}] {run.name}: training ({run_dirs[run.name]})", flush=True)
        try:
            status, log_path, seconds = runner.run(run, paths[run.name], run_dirs[run.name])
        except StudyInterruptedError as e:
            print(f"stopped: {e}", file=sys.stderr)
            return RESUMABLE_EXIT_STATUS
        config = configs[run.name]
        state = run_state(run_dirs[run.name], config.train.num_steps, bool(config.evals))
        if status == 0 and state == FINISHED:
            print(f"[{run.index + 1}/{len(runs)}] {run.name}: finished in {seconds:.0f} s", flush=True)
            continue
        reason = last_error(log_path)
        failed.append((run.name, status, log_path, reason))
        print(f"[{run.index + 1}/{len(runs)}] {run.name}: FAILED (status {status}, {state}) after "
              f"{seconds:.0f} s: {reason}\n    log: {log_path}", flush=True)
    if failed:
        print(f"{len(failed)} of {len(runs)} runs failed:", file=sys.stderr)
        for name, status, log_path, _ in failed:
            print(f"  {name}: status {status}, log {log_path}", file=sys.stderr)
        return 1
    study_dir = os.path.dirname(run_dirs[runs[0].name])
    print(f"all {len(runs)} runs finished; `python -m vlmjax.report {study_dir}` tabulates them", flush=True)
    return 0


if __name__ == "__main__":
    run_main(main)
