"""`python -m vlmjax.study`: expansion and naming, bad input rejected for every run before any
starts, another study's directory refused, and real runs here: a failed run reported with its
log while the rest go on, a SIGTERM that checkpoints and stops the study, a resumed run, finished
runs skipped."""

import dataclasses
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, TINY_CONFIG
from vlmjax.config import config_from_args
from vlmjax.errors import ConfigError, VlmjaxError
from vlmjax.study.check import check_runs
from vlmjax.study.slurm import array_spec, sbatch_command, write_args
from vlmjax.study.spec import label_of, load_study, parse_study, raw_value
from vlmjax.study.state import FINISHED, INTERRUPTED, NEW, claim_directory, lock_directory, run_state
from vlmjax.study.tpu import tpu_commands

STUDY_FILE = os.path.join(REPO, "configs", "study", "tiny_test.py")
STEPS = 60  # of the runs trained here; a row every step: the SIGTERM lands mid-run even on a fast machine


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "VLMJAX_"))}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=REPO,
               XLA_FLAGS="--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=0")
    return env


def _study(tmp_path, body: dict, name: str = "study.py") -> str:
    path = tmp_path / name
    path.write_text(f"def get_study():\n    return {body!r}\n")
    return str(path)


def _cli(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vlmjax.study", *args], cwd=REPO, env=env or _env(),
                          capture_output=True, text=True, timeout=timeout)


def test_axes_expand_to_the_cross_product_with_deterministic_names():
    study = load_study(STUDY_FILE)
    runs = study.runs({"data.dir": "/d"})
    assert len(runs) == 16 and [r.index for r in runs] == list(range(16))
    assert runs[0].name == "objective=clip,size=w16,steps=10,seed=0"
    assert runs[1].name == "objective=clip,size=w16,steps=10,seed=1"  # the last axis varies fastest
    assert runs[15].name == "objective=siglip,size=w32,steps=20,seed=1"
    assert len({r.name for r in runs}) == 16
    siglip = runs[15].overrides
    # A preset sets several keys; shared overrides and the command line's apply to every run.
    assert siglip["objective.name"] == "siglip" and siglip["model.use_logit_bias"] is True
    assert siglip["model.image.width"] == 32 and siglip["train.num_steps"] == 20 and siglip["seed"] == 1
    assert siglip["train.checkpoint_every"] == 10 and siglip["data.dir"] == "/d"
    assert study.scaling == {"data": {"axis": "steps", "x": {"10": 320.0, "20": 640.0}},
                             "model": {"axis": "size", "x": {}}}
    assert [r.name for r in load_study(STUDY_FILE + ":quick").runs()] == [
        "objective=clip,seed=0", "objective=clip,seed=1", "objective=siglip,seed=0",
        "objective=siglip,seed=1"]


def test_only_a_numeric_data_sweep_is_its_own_x():
    """A size preset that sets one number (embed_dim) is no model size: the model axis' x is
    the parameter count (read later), and a data axis of presets needs its x given."""
    sizes = {"small": {"model.embed_dim": 48, "model.image.width": 48}, "demo": {"model.embed_dim": 96}}
    study = parse_study({"config": "a.py", "axes": {"size": sizes, "steps": {"train.num_steps": [10, 20]}},
                         "scaling": {"model": "size", "data": "steps"}}, "inline")
    assert study.scaling == {"model": {"axis": "size", "x": {}},
                             "data": {"axis": "steps", "x": {"10": 10.0, "20": 20.0}}}
    with pytest.raises(ConfigError, match="scaling.data: give x for small, demo"):
        parse_study({"config": "a.py", "axes": {"size": sizes}, "scaling": {"data": "size"}}, "inline")


def test_override_text_parses_back_to_the_value_it_came_from(tiny_config):
    values = {"train.num_steps": 7, "optimizer.lr": 0.25, "model.use_logit_bias": True,
              "objective.name": "siglip", "data.image_mean": (0.1, 0.2, 0.3), "optimizer.b1": 1e-3}
    config = config_from_args(TINY_CONFIG, [f"{k}={raw_value(v)}" for k, v in values.items()])
    assert config.train.num_steps == 7 and config.optimizer.lr == 0.25 and config.optimizer.b1 == 1e-3
    assert config.model.use_logit_bias is True and config.objective.name == "siglip"
    assert tuple(config.data.image_mean) == (0.1, 0.2, 0.3)
    assert [label_of(v) for v in (0.5, "B/16", True, (1, 2), "a b")] == ["0.5", "B_16", "true", "1_2", "a_b"]


def test_a_preset_may_replace_the_base_config_file():
    axis = {"clip": {"objective.name": "clip"}, "coca": {"config": "configs/test/tiny_coca.py"}}
    study = parse_study({"config": "a.py", "axes": {"model": axis}}, "inline")
    clip, coca = study.runs()
    assert (clip.config, coca.config) == ("a.py", "configs/test/tiny_coca.py")
    assert coca.overrides == {} and coca.name == "model=coca"


def test_malformed_studies_list_every_problem():
    with pytest.raises(ConfigError) as e:
        parse_study({"config": "", "axs": {}, "axes": {
            "a": {"seed": [0, 1]}, "b": {"seed": [2]}, "c": {"x": {"k": 1}, "y": [1]},
            "d": {"k": []}, "e": {"la bel": {"k": 1}}}, "scaling": {"size": "a"}}, "s.py")
    message = str(e.value)
    for part in ("unknown entries 'axs'", "'config' must name the base config file",
                 "seed is set by axis 'b' and by axis 'a'", "axis 'c' is neither a sweep",
                 "axis 'd': k has no values", "label 'la bel' is not filesystem-safe",
                 "'scaling' has 'size'"):
        assert part in message, part


def test_unknown_keys_and_bad_values_are_rejected_for_every_run_before_any_starts(tmp_path,
                                                                                  synthetic_data_dir):
    study = _study(tmp_path, {"config": TINY_CONFIG, "overrides": {"data.dir": synthetic_data_dir},
                              "axes": {"steps": {"train.num_steps": [1, 4]},
                                       "width": {"w16": {"model.image.width": 16},
                                                 "bad": {"model.image.widht": 8},
                                                 "odd": {"model.image.width": 15}},
                                       "objective": {"objective.name": ["clip", "nope"]}}})
    runs = load_study(study).runs()
    with pytest.raises(ConfigError) as e:
        check_runs(runs, [REPO], num_devices=1)
    message = str(e.value)
    assert "nothing was started" in message
    # All distinct problems are listed (each with the runs it affects), not only the first.
    assert ("model.image.widht is not a key of this config; did you mean "
            "--config.model.image.width?") in message
    assert "model.image.heads (2) does not divide the width (15)" in message
    assert "optimizer.warmup_steps (2) is not below train.num_steps (1)" in message
    assert "'nope'" in message
    assert "steps=4,width=w16,objective=clip" not in message  # the one valid run
    # The command line checks the same before starting anything: no run directory is made.
    done = _cli("--config", study, "--workdir", str(tmp_path / "runs"), "--devices", "1")
    assert done.returncode == 2 and "problem(s) in 11 of 12 runs" in done.stderr, done.stderr
    assert not (tmp_path / "runs").exists()


def test_a_directory_of_another_study_is_refused(tmp_path):
    one = load_study(STUDY_FILE + ":quick")
    record = one.record(one.runs())
    directory = str(tmp_path / "study")
    claim_directory(directory, record)
    claim_directory(directory, record)  # the same study again: fine
    body = load_study(STUDY_FILE + ":quick")
    other = dataclasses.replace(body, overrides={**body.overrides, "train.num_steps": 30})
    refused = r"holds another study .*train.num_steps=20, this study sets 30"
    for write in (True, False):  # (False: what --dry_run checks)
        with pytest.raises(VlmjaxError, match=refused):
            claim_directory(directory, other.record(other.runs()), write=write)
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "something").write_text("x")
    with pytest.raises(VlmjaxError, match="not empty and holds no study.json"):
        claim_directory(str(tmp_path / "plain"), record)
    # The same runs read another way (the study file's scaling changed): the record follows it,
    # except when only checking (--dry_run).
    reread = dataclasses.replace(one, scaling={"data": {"axis": "seed", "x": {"0": 1.0, "1": 2.0}}})
    claim_directory(directory, reread.record(one.runs()), write=False)
    with open(os.path.join(directory, "study.json")) as f:
        assert json.load(f)["scaling"] == json.loads(json.dumps(record["scaling"]))
    claim_directory(directory, reread.record(one.runs()))
    with open(os.path.join(directory, "study.json")) as f:
        assert json.load(f)["scaling"] == {"data": {"axis": "seed", "x": {"0": 1.0, "1": 2.0}}}


def test_one_local_runner_per_study_directory(tmp_path):
    taken = rf"another `python -m vlmjax.study` \(pid {os.getpid()}\)"
    with lock_directory(str(tmp_path)), pytest.raises(VlmjaxError, match=taken):
        lock_directory(str(tmp_path))
    lock_directory(str(tmp_path)).close()  # free again


def test_run_state_from_the_run_directory(tmp_path):
    run = tmp_path / "run"
    assert run_state(str(run), 20, True) == NEW
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "LATEST").write_text("10")
    assert run_state(str(run), 20, True) == INTERRUPTED
    (run / "checkpoints" / "LATEST").write_text("20")
    assert run_state(str(run), 20, False) == FINISHED
    assert run_state(str(run), 20, True) == INTERRUPTED  # trained, not evaluated yet: resume evaluates
    (run / "results.json").write_text(json.dumps({"step": 20, "evals": {}}))
    assert run_state(str(run), 20, True) == FINISHED


def test_slurm_array_and_tpu_commands(tmp_path):
    assert array_spec([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert array_spec([3], max_parallel=2) == "3%2"
    run = load_study(STUDY_FILE + ":quick").runs({"data.dir": "/data dir"})[2]
    path = write_args(str(tmp_path), run, "/repo/configs/test/tiny_clip.py", "/s/objective=siglip,seed=0")
    with open(path, "rb") as f:
        fields = f.read().split(b"\0")
    assert path.endswith("slurm/2.args") and fields[-1] == b""
    assert [x.decode() for x in fields[:-1]] == [
        "/repo/configs/test/tiny_clip.py", "/s/objective=siglip,seed=0", *run.override_args()]
    assert "--config.data.dir=/data dir" in run.override_args()
    command = sbatch_command("/repo", "/s", [0, 2, 3], "vlmjax-study-x", ["--nodes=4"])
    assert command[:5] == ["sbatch", "--parsable", "--array=0,2-3", "--job-name=vlmjax-study-x",
                           "--comment=vlmjax-study:/s"]
    assert command[-4:] == ["--nodes=4", "/repo/launch/slurm_gpu.sbatch", "--study", "/s"]
    (line,) = tpu_commands(REPO, [(run, os.path.join(REPO, "configs/test/tiny_clip.py"), "/mnt/s/r")])
    assert line.startswith("bash launch/tpu_pod.sh train configs/test/tiny_clip.py /mnt/s/r ")
    assert "'--config.data.dir=/data dir'" in line


def test_slurm_without_sbatch_says_so_in_one_line(tmp_path):
    env = _env()
    env["PATH"] = os.path.dirname(sys.executable)  # python, but no sbatch
    done = _cli("--config", STUDY_FILE + ":quick", "--workdir", str(tmp_path / "s"), "--slurm",
                "--devices", "2", env=env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: --slurm needs SLURM's `sbatch` on the PATH and it is not there; run this on a login "
        "node of the cluster (or drop --slurm to run here)"]


def _truncated_copy(source: str, target: str) -> str:
    """The dataset with its training images cut short: headers intact (validation passes), body not."""
    shutil.copytree(source, target)
    path = os.path.join(target, "train-images-idx3-ubyte.gz")
    with gzip.open(path) as f:
        data = f.read()
    with gzip.open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    return target


@pytest.fixture(scope="module")
def local_study(tmp_path_factory, synthetic_data_dir):
    """Three runs here: a run whose data is damaged (fails at run time), one stopped by SIGTERM
    to the study and resumed by the second invocation, and one that runs after them."""
    tmp = tmp_path_factory.mktemp("study")
    broken = _truncated_copy(synthetic_data_dir, str(tmp / "broken_data"))
    study = _study(tmp, {"config": "configs/test/tiny_clip.py",
                         "overrides": {"train.num_steps": STEPS, "train.checkpoint_every": 30,
                                       "train.log_every": 1},
                         "axes": {"run": {"broken": {"data.dir": broken},
                                          "a": {"data.dir": synthetic_data_dir, "seed": 0},
                                          "b": {"data.dir": synthetic_data_dir, "seed": 1}}}})
    directory = str(tmp / "runs")
    env = _env()
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp / "cache")
    args = ["--config", study, "--workdir", directory]
    # An override for every run may not set a key an axis sets (which one would win?).
    clash = _cli(*args, "--config.seed=3", env=env)
    first = subprocess.Popen([sys.executable, "-m", "vlmjax.study", *args], cwd=REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = os.path.join(directory, "run=a", "metrics.jsonl")
    deadline = time.time() + 300
    while time.time() < deadline and first.poll() is None:
        if os.path.exists(metrics) and os.path.getsize(metrics) > 0:
            break
        time.sleep(0.02)
    first.send_signal(signal.SIGTERM)
    out1, err1 = first.communicate(timeout=300)
    with open(os.path.join(directory, "run=a", "checkpoints", "LATEST")) as f:
        stopped_at = int(f.read())
    # (The first invocation counted the devices itself.)
    second = _cli(*args, "--devices", "1", env=env)
    third = _cli(*args, "--dry_run", "--devices", "1", env=env)
    return directory, clash, (first.returncode, out1, err1), stopped_at, second, third


def test_run_failure_is_reported_with_its_log_and_the_rest_go_on(local_study):
    directory, _, first, _, second, _ = local_study
    log = os.path.join(directory, "run=broken", "run.log")
    assert "run=broken: FAILED (status 2, new)" in first[1] and f"log: {log}" in first[1]
    assert "train-images-idx3-ubyte.gz holds" in first[1]  # the run's own one-line error
    assert second.returncode == 1, second.stderr
    assert "1 of 3 runs failed" in second.stderr and f"run=broken: status 2, log {log}" in second.stderr
    assert "run=b: finished in" in second.stdout


def test_sigterm_stops_the_study_with_a_checkpoint_and_the_next_start_resumes(local_study):
    directory, _, first, stopped_at, second, _ = local_study
    status, out, err = first
    assert status == 75, err
    assert "run the same command to resume the study" in err
    assert "[3/3]" not in out  # the study stopped; the next run was not started
    assert 0 < stopped_at < STEPS
    with open(os.path.join(directory, "run=a", "run.log")) as f:
        log = f.read()
    assert f"wrote the checkpoint of step {stopped_at}" in log
    assert f"resumed from step {stopped_at}" in log
    assert "run=a: finished in" in second.stdout


def test_finished_runs_are_skipped_and_the_directory_is_recorded(local_study):
    directory, clash, _, _, _, third = local_study
    assert clash.returncode == 2 and "cannot set an axis key" in clash.stderr
    assert third.returncode == 0, third.stderr
    states = {line.split()[2]: line.split()[1] for line in third.stdout.splitlines()[1:4]}
    assert states == {"run=broken": "new", "run=a": "finished", "run=b": "finished"}
    with open(os.path.join(directory, "study.json")) as f:
        record = json.load(f)
    assert [r["name"] for r in record["runs"]] == ["run=broken", "run=a", "run=b"]
    for name in ("run=a", "run=b"):
        with open(os.path.join(directory, name, "results.json")) as f:
            assert json.load(f)["step"] == STEPS
        with open(os.path.join(directory, name, "config.json")) as f:
            assert json.load(f)["seed"] == {"run=a": 0, "run=b": 1}[name]


def test_the_report_reads_the_real_study_and_counts_parameters_from_checkpoints(local_study, tmp_path):
    import jax
    import numpy as np

    from tests.launch_helpers import final_params
    from vlmjax.report import write_study_report
    from vlmjax.study.summary import parameter_count
    directory = local_study[0]
    with open(write_study_report(directory, str(tmp_path / "report"))) as f:
        report = f.read()
    assert "2 of 3 runs have results" in report and "Not finished yet (left out): run=broken." in report
    assert "| run | fashion_mnist | mean | n |" in report
    run_dir = os.path.join(directory, "run=a")
    params = final_params(run_dir, STEPS)
    assert parameter_count(run_dir) == sum(int(np.size(x)) for x in jax.tree.leaves(params)) > 10_000
    assert parameter_count(os.path.join(directory, "run=broken")) is None
