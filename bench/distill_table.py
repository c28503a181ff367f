"""Distillation at equal budget: the demo student trained alone against distilled from a teacher.

    source launch/env.sh && .venv/bin/python bench/distill_table.py --teacher workdir/demo_clip
        [--steps 1000] [--seeds 0] [--workdir /tmp/distill] [--config.key=value ...]

Trains configs/demo/distill_fashion_mnist.py's student (about a quarter of the demo CLIP's
parameters) twice, for the same steps on the same data and seed, with `python -m vlmjax.train`:
"alone" (CLIP's loss) and "distill" (CLIP's loss plus the config's feature, affinity and
interactive terms from the frozen teacher run). Prints the teacher's and both students'
zero-shot top-1 on the Fashion-MNIST test set, their parameter counts and wall times (the
distilled run's includes the teacher's forward pass), then one JSON line. `--config.*`
overrides apply to both runs (objective weights only to the distilled one). `--seeds 0,1,2`
repeats the pair for each seed (`config.seed`: initialisation, data order, augmentation) and
adds the mean, the sample standard deviation and the paired difference distilled - alone with
its standard error: one pair differs by about a point from seed to seed on this demo.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "demo", "distill_fashion_mnist.py")


def parameters(workdir: str) -> int:
    """Trained parameters of a run (the teacher's frozen weights are no parameters)."""
    from vlmjax.train.run import param_shapes, run_tokenizer
    from vlmjax.train.workdir import load_saved_config
    cfg = load_saved_config(workdir).to_dict()
    shapes = param_shapes(cfg, run_tokenizer(workdir).vocab_size)
    return sum(_size(shape) for shape in shapes.values())


def _size(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def zero_shot(workdir: str) -> float | None:
    path = os.path.join(workdir, "results.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)["evals"]["zeroshot/fashion_mnist"]["acc1"]


def train(workdir: str, arg: str, steps: int, teacher: str, overrides: list[str]) -> dict:
    """One student run; its zero-shot top-1, parameters and wall time."""
    args = [sys.executable, "-m", "vlmjax.train", "--config", f"{CONFIG}:{arg}", "--workdir",
            workdir, f"--config.train.num_steps={steps}"]
    if arg == "distill":
        args.append(f"--config.model.distill.teacher={teacher}")
    args += [f"--config.{o}" for o in overrides
             if arg == "distill" or not o.startswith(("objective.", "model.distill."))]
    start = time.perf_counter()
    out = subprocess.run(args, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - start
    if out.returncode:
        raise SystemExit(f"training failed ({' '.join(args)}):\n{out.stderr[-3000:]}")
    return {"run": arg, "steps": steps, "wall_s": round(wall, 1), "acc1": zero_shot(workdir),
            "parameters": parameters(workdir), "workdir": workdir}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="workdir/demo_clip", help="the teacher run")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seeds", default="0", help="comma-separated config.seed values")
    parser.add_argument("--workdir", default="", help="default: a fresh temporary directory")
    args, rest = parser.parse_known_args()
    overrides = [a.removeprefix("--config.") for a in rest if a.startswith("--config.")]
    teacher = os.path.abspath(args.teacher)
    root = args.workdir or tempfile.mkdtemp(prefix="distill_table_")
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = []
    for seed in seeds:
        where = root if seeds == [0] else os.path.join(root, f"seed{seed}")
        for arg in ("alone", "distill"):
            row = train(os.path.join(where, arg), arg, args.steps, teacher,
                        [*overrides, f"seed={seed}"])
            runs.append({**row, "seed": seed})
    teacher_row = {"run": "teacher", "steps": None, "wall_s": None, "acc1": zero_shot(teacher),
                   "parameters": parameters(teacher), "workdir": teacher, "seed": None}
    print(f"{'model':>10}{'seed':>6}{'parameters':>12}{'steps':>7}{'wall s':>8}"
          f"{'zero-shot acc1':>16}")
    for row in (teacher_row, *runs):
        acc = "n/a" if row["acc1"] is None else f"{row['acc1']:.4f}"
        seed = "" if row["seed"] is None else row["seed"]
        print(f"{row['run']:>10}{seed:>6}{row['parameters']:>12}{row['steps'] or '':>7}"
              f"{row['wall_s'] or '':>8}{acc:>16}")
    summary = seed_summary(runs)
    for name, value in summary.items():
        print(f"{name}: {value}")
    print(json.dumps({"teacher": teacher_row, "runs": runs, "summary": summary,
                      "overrides": overrides, "load": os.getloadavg()}))


def seed_summary(runs: list[dict]) -> dict:
    """Mean and sample standard deviation of each arm's top-1 over seeds, and the paired
    difference distilled - alone (mean, standard error); std / stderr need two seeds."""
    acc = {arm: {r["seed"]: r["acc1"] for r in runs if r["run"] == arm}
           for arm in ("alone", "distill")}
    seeds = sorted(acc["alone"])
    out = {}
    for arm, by_seed in acc.items():
        values = [by_seed[s] for s in seeds]
        out[f"{arm}_mean"] = round(statistics.fmean(values), 4)
        out[f"{arm}_std"] = round(statistics.stdev(values), 4) if len(values) > 1 else None
    diff = [acc["distill"][s] - acc["alone"][s] for s in seeds]
    out["difference_mean"] = round(statistics.fmean(diff), 4)
    out["difference_stderr"] = (round(statistics.stdev(diff) / len(diff) ** 0.5, 4)
                                if len(diff) > 1 else None)
    return out


if __name__ == "__main__":
    main()
