"""FLIP at equal wall-clock: the demo CLIP's zero-shot accuracy with patch masking against none.

    source launch/env.sh && .venv/bin/python bench/flip_accuracy.py [--steps 1000]
        [--mask_ratio 0.5] [--rounds 4] [--workdir /tmp/flip] [--config.key=value ...]

1. Times the demo's train step (configs/demo/clip_fashion_mnist.py, the jitted step of
   bench/train_step.py) without masking and with `model.image.mask_ratio`, in interleaved
   rounds on the same cores: t0 and t_mask.
2. Trains the demo without masking for --steps steps, and with masking for
   round(steps * t0 / t_mask) steps, i.e. the same step-time budget (each run has its own
   cosine schedule over its steps), with `python -m vlmjax.train`; evaluation sees every patch.
3. Prints the steps, the measured training wall time (step timing above is the budget; the
   runs' own wall time includes tokenizer training, compilation and evaluation) and each run's
   zero-shot top-1 on the Fashion-MNIST test set, then one JSON line.
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
sys.path.insert(0, BENCH)

import train_step as bench  # noqa: E402  (bench/ is not a package)

CONFIG = os.path.join(bench.DEMO, "clip_fashion_mnist.py")


def step_times(mask_ratio: float, rounds: int, threads: int, overrides: list[str]) -> tuple:
    """Median step seconds of the demo without and with masking, interleaved vlmjax workers."""
    spec, _, batch, _ = bench.ROWS["demo_clip"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "batch.npz")
        bench._write_row_batch("demo_clip", overrides, path)
        workers = []
        try:
            for ratio in (0.0, mask_ratio):
                worker = bench.Worker([sys.executable, os.path.join(BENCH, "train_step.py"),
                                       "--worker", f"--threads={threads}"], env)
                workers.append(worker)
                worker.ask(cmd="build", spec=spec, batch_size=batch, batch=path,
                           overrides=[*overrides, f"model.image.mask_ratio={ratio}"])
            times: list[list[float]] = [[], []]
            for _ in range(rounds):
                for i, worker in enumerate(workers):
                    times[i] += worker.ask(cmd="time", steps=5)["times"]
        finally:
            for worker in workers:
                worker.close()
    return statistics.median(times[0]), statistics.median(times[1])


def train(workdir: str, steps: int, mask_ratio: float, overrides: list[str]) -> dict:
    """One demo run; its zero-shot metrics and wall time."""
    args = [sys.executable, "-m", "vlmjax.train", "--config", CONFIG, "--workdir", workdir,
            f"--config.train.num_steps={steps}", f"--config.model.image.mask_ratio={mask_ratio}",
            *(f"--config.{o}" for o in overrides)]
    start = time.perf_counter()
    out = subprocess.run(args, capture_output=True, text=True, cwd=bench.REPO)
    wall = time.perf_counter() - start
    if out.returncode:
        raise SystemExit(f"training failed ({' '.join(args)}):\n{out.stderr[-3000:]}")
    with open(os.path.join(workdir, "results.json")) as f:
        evals = json.load(f)["evals"]
    return {"steps": steps, "mask_ratio": mask_ratio, "wall_s": wall,
            "acc1": evals["zeroshot/fashion_mnist"]["acc1"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000, help="steps of the unmasked run")
    parser.add_argument("--mask_ratio", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", default="", help="default: a fresh temporary directory")
    args, rest = parser.parse_known_args()
    overrides = [a.removeprefix("--config.") for a in rest if a.startswith("--config.")]
    print(bench.host_summary(args.threads), flush=True)
    t0, t_mask = step_times(args.mask_ratio, args.rounds, args.threads, overrides)
    masked_steps = round(args.steps * t0 / t_mask)
    root = args.workdir or tempfile.mkdtemp(prefix="flip_accuracy_")
    runs = [train(os.path.join(root, "mask_0"), args.steps, 0.0, overrides),
            train(os.path.join(root, f"mask_{args.mask_ratio:g}"), masked_steps, args.mask_ratio,
                  overrides)]
    print(f"step time: {t0 * 1e3:.1f} ms unmasked, {t_mask * 1e3:.1f} ms at mask_ratio "
          f"{args.mask_ratio:g} ({t0 / t_mask:.2f}x the steps in the same time)")
    print(f"{'mask_ratio':>10}{'steps':>7}{'step budget s':>15}{'run wall s':>12}{'zero-shot acc1':>16}")
    for run, step_s in zip(runs, (t0, t_mask), strict=True):
        print(f"{run['mask_ratio']:>10g}{run['steps']:>7}{run['steps'] * step_s:>15.1f}"
              f"{run['wall_s']:>12.0f}{run['acc1']:>16.4f}")
    print(json.dumps({"t0_s": t0, "t_mask_s": t_mask, "runs": runs, "workdir": root,
                      "load": os.getloadavg()}))


if __name__ == "__main__":
    main()
