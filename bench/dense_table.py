"""Dense zero-shot on Fashion-MNIST scenes at equal wall-clock: CLIP vs SigLIP vs FILIP vs the
local patch-to-phrase objective (configs/demo/dense_fashion_mnist.py).

    source launch/env.sh && .venv/bin/python bench/dense_table.py [--base_steps 1000]
        [--objectives clip,siglip,filip,patch_phrase] [--layout ""|grid] [--rounds 3]
        [--seeds 0[,1,2]] [--workdir /tmp/dense_table] [--config.key=value ...]

1. Times each objective's jitted train step on one real scenes batch (bench/train_step.py's
   VlmjaxRow), in interleaved rounds on the same cores: t_objective.
2. Trains CLIP for --base_steps steps and every other objective for
   round(base_steps * t_clip / t_objective) steps (the same step-time budget; each run has its
   own cosine schedule), with `python -m vlmjax.train`, once per seed of --seeds
   (config.seed: initialisation, data order, augmentation).
3. Evaluates each run with configs/eval/dense_scenes.py (background calibrated on the held-out
   "val" canvases, background prompts) and prints the tables: objectives x (image-level
   zero-shot acc1, mIoU foreground-only and with background per dense method, region top-1),
   and the survey's layout (methods x datasets, mIoU); with several seeds also each
   objective's mean and sample standard deviation over them; writes table.md and table.json.
   `--tables_only a,b,c` prints the tables of finished runs under --workdir (e.g. variants
   trained by hand with the same budget).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path.insert(0, BENCH)
CONFIG = os.path.join(REPO, "configs", "demo", "dense_fashion_mnist.py")
SUITE = os.path.join(REPO, "configs", "eval", "dense_scenes.py")
METHODS = ("tokens", "maskclip", "sclip")


def scene_batch(path: str, spec: str, overrides: list[str]) -> None:
    """One training batch of the config's scenes (with phrases) as .npz."""
    import numpy as np

    from vlmjax.config import config_from_args
    from vlmjax.data.registry import get_train_source
    from vlmjax.data.scenes import scene_texts
    from vlmjax.tokenizers.trained_bpe import train_bpe

    cfg = config_from_args(spec, [*overrides, "data.phrases=True"]).to_dict()
    tokenizer = train_bpe(scene_texts(), cfg["tokenizer"]["vocab_size"])
    iterator = get_train_source(cfg["data"]).build(cfg, tokenizer, slice(None), 0, 1)
    np.savez(path, **next(iterator))


def step_times(objectives: list[str], layout: str, rounds: int, overrides: list[str]) -> dict:
    """Median step seconds per objective, measured in interleaved rounds in this process."""
    from train_step import VlmjaxRow

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "batch.npz")
        scene_batch(path, f"{CONFIG}:patch_phrase{layout}", overrides)
        rows = {}
        for objective in objectives:
            spec = f"{CONFIG}:{objective}{layout}"
            batch = int(_config(spec, overrides)["train"]["batch_size"])
            rows[objective] = VlmjaxRow(spec, overrides, batch, path)
        times: dict[str, list[float]] = {o: [] for o in objectives}
        for _ in range(rounds):
            for objective, row in rows.items():
                times[objective] += row.run(5)[0]
    return {o: statistics.median(t) for o, t in times.items()}


def _config(spec: str, overrides: list[str]) -> dict:
    from vlmjax.config import config_from_args
    return config_from_args(spec, overrides).to_dict()


def _run(args: list[str]) -> float:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO)
    if out.returncode:
        raise SystemExit(f"failed: {' '.join(args)}\n{out.stderr[-3000:]}")
    return time.perf_counter() - start


def train_and_evaluate(workdir: str, objective: str, layout: str, steps: int,
                       overrides: list[str]) -> dict:
    """One run: training wall time, then the dense suite; its results.json evals."""
    dataset = "fashion_mnist_scenes_grid" if layout else "fashion_mnist_scenes"
    wall = _run(["-m", "vlmjax.train", "--config", f"{CONFIG}:{objective}{layout}",
                 "--workdir", workdir, f"--config.train.num_steps={steps}",
                 *(f"--config.{o}" for o in overrides)])
    _run(["-m", "vlmjax.evaluate", "--workdir", workdir, "--config", f"{SUITE}:{dataset}"])
    with open(os.path.join(workdir, "results.json")) as f:
        evals = json.load(f)["evals"]
    return {"steps": steps, "train_and_eval_s": wall, "evals": evals, "dataset": dataset}


def rows(results: dict) -> list[dict]:
    """Per run: acc1, per method mIoU fg / calibrated / prompts, region acc1."""
    out = []
    for name, r in results.items():
        evals, d = r["evals"], r["dataset"]
        row = {"objective": name, "steps": r["steps"],
               "acc1": evals[f"zeroshot/{d}"]["acc1"],
               "crop_acc1": evals[f"region_classification/{d}"]["crop/acc1"]}
        for m in METHODS:
            calibrated = evals[f"dense_segmentation/{d}"]
            row[f"{m}_miou_fg"] = calibrated[f"{m}/miou_fg"]
            row[f"{m}_miou_bg_calibrated"] = calibrated[f"{m}/miou"]
            row[f"{m}_miou_bg_learned"] = evals[f"dense_segmentation/{d}/learned"][f"{m}/miou"]
            row[f"{m}_miou_bg_prompts"] = evals[f"dense_segmentation/{d}/prompts"][f"{m}/miou"]
            row[f"{m}_roi_acc1"] = evals[f"region_classification/{d}"][f"{m}/acc1"]
        out.append(row)
    return out


def markdown(table: list[dict], times: dict, dataset: str) -> str:
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    lines = ["| objective | steps | step (s) | zero-shot acc1 | " + " | ".join(
        f"{m} mIoU fg / bg cal. / bg learned / bg prompts" for m in METHODS) +
        " | region acc1 crop / " +
        " / ".join(f"RoI {m}" for m in METHODS) + " |",
        "|---" * (5 + len(METHODS)) + "|"]
    for r in table:
        dense = " | ".join(f"{pct(r[f'{m}_miou_fg'])} / {pct(r[f'{m}_miou_bg_calibrated'])} / "
                           f"{pct(r[f'{m}_miou_bg_learned'])} / {pct(r[f'{m}_miou_bg_prompts'])}"
                           for m in METHODS)
        regions = " / ".join([pct(r["crop_acc1"])] + [pct(r[f"{m}_roi_acc1"]) for m in METHODS])
        lines.append(f"| {r['objective']} | {r['steps']} | {times[r['objective']]:.3f} | "
                     f"{pct(r['acc1'])} | {dense} | {regions} |")
    lines += ["", "Survey layout: zero-shot segmentation mIoU (%), methods x datasets "
              "(background: the learned rule, fit on held-out canvases)", "",
              f"| method | {dataset} (with background) | {dataset} (foreground only) |",
              "|---|---|---|"]
    for r in table:
        for m in METHODS:
            lines.append(f"| {r['objective']} + {m} | {pct(r[f'{m}_miou_bg_learned'])} | "
                         f"{pct(r[f'{m}_miou_fg'])} |")
    return "\n".join(lines)


def seed_summary(table: list[dict], runs: dict[str, tuple[str, int]]) -> tuple[list[dict], str]:
    """Mean and sample std over the seeds of each objective (runs: name -> (objective, seed))."""
    keys = ["acc1"] + [f"{m}_{k}" for m in METHODS for k in ("miou_fg", "miou_bg_calibrated",
                                                                "miou_bg_learned")]
    by_objective: dict[str, list[dict]] = {}
    for row in table:
        by_objective.setdefault(runs[row["objective"]][0], []).append(row)
    summary, pct = [], lambda v: f"{100 * v:.1f}"  # noqa: E731
    lines = ["| objective | seeds | zero-shot acc1 | " + " | ".join(
        f"{m} mIoU fg / bg cal. / bg learned" for m in METHODS) + " |",
        "|---" * (3 + len(METHODS)) + "|"]
    for objective, group in by_objective.items():
        stats = {k: (statistics.mean(r[k] for r in group),
                     statistics.stdev(r[k] for r in group) if len(group) > 1 else 0.0)
                 for k in keys}
        summary.append({"objective": objective,
                        "seeds": [runs[r["objective"]][1] for r in group],
                        **{k: {"mean": m, "std": sd} for k, (m, sd) in stats.items()}})
        cell = lambda k, stats=stats: f"{pct(stats[k][0])} ({pct(stats[k][1])})"  # noqa: E731
        lines.append(f"| {objective} | {len(group)} | {cell('acc1')} | " + " | ".join(
            " / ".join(cell(f"{m}_{k}") for k in ("miou_fg", "miou_bg_calibrated",
                                                  "miou_bg_learned")) for m in METHODS) + " |")
    return summary, "\n".join(lines)


def tables_of(workdir: str, names: list[str]) -> str:
    """The tables again from finished runs workdir/<name> (variants included), with the step
    times of table.json by each run's objective."""
    with open(os.path.join(workdir, "table.json")) as f:
        step_seconds = json.load(f)["step_seconds"]
    results, times = {}, {}
    for name in names:
        with open(os.path.join(workdir, name, "results.json")) as f:
            evals = json.load(f)["evals"]
        with open(os.path.join(workdir, name, "config.json")) as f:
            config = json.load(f)
        dataset = config["data"]["name"]
        results[name] = {"steps": config["train"]["num_steps"], "evals": evals, "dataset": dataset}
        times[name] = step_seconds[config["objective"]["name"]]
    return markdown(rows(results), times, results[names[0]]["dataset"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base_steps", type=int, default=1000, help="CLIP's steps")
    parser.add_argument("--objectives", default="clip,siglip,filip,patch_phrase")
    parser.add_argument("--layout", default="", choices=("", "grid"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seeds", default="0", help="comma-separated config.seed values")
    parser.add_argument("--workdir", default="/tmp/dense_table")
    parser.add_argument("--tables_only", default="",
                        help="names of finished runs under --workdir: print their tables only")
    args, rest = parser.parse_known_args()
    if args.tables_only:
        print(tables_of(args.workdir, args.tables_only.split(",")))
        return
    overrides = [a.removeprefix("--config.") for a in rest]
    objectives = args.objectives.split(",")
    layout = f":{args.layout}" if args.layout else ""
    times = step_times(objectives, layout, args.rounds, overrides)
    print("step seconds:", json.dumps(times), flush=True)
    reference = times.get("clip", next(iter(times.values())))
    seeds = [int(s) for s in args.seeds.split(",")]
    results, runs = {}, {}
    for seed in seeds:  # seed-major: a cut-short run still has every objective at one seed
        for objective in objectives:
            name = objective if len(seeds) == 1 else f"{objective}_seed{seed}"
            steps = round(args.base_steps * reference / times[objective])
            results[name] = train_and_evaluate(os.path.join(args.workdir, name), objective,
                                               layout, steps, [*overrides, f"seed={seed}"])
            runs[name] = (objective, seed)
            print(name, steps, "steps,", f"{results[name]['train_and_eval_s']:.0f} s",
                  flush=True)
    table = rows(results)
    text = markdown(table, {n: times[o] for n, (o, _) in runs.items()},
                    results[next(iter(results))]["dataset"])
    summary = []
    if len(seeds) > 1:
        summary, seed_text = seed_summary(table, runs)
        text += f"\n\nMean (sample std) over seeds {args.seeds}:\n\n{seed_text}"
    print(text)
    os.makedirs(args.workdir, exist_ok=True)
    with open(os.path.join(args.workdir, "table.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(args.workdir, "table.json"), "w") as f:
        json.dump({"step_seconds": times, "rows": table, "seed_summary": summary,
                   "runs": {n: {k: v for k, v in r.items() if k != "evals"} | {
                       "objective": runs[n][0], "seed": runs[n][1]}
                            for n, r in results.items()}}, f, indent=1)


if __name__ == "__main__":
    main()
