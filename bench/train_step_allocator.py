"""Steady-state train step of the demo CLIP with glibc malloc vs tcmalloc, side by side.

    .venv/bin/python bench/train_step_allocator.py [--steps 20] [--config.key=value ...]

Each allocator runs in its own process (LD_PRELOAD must be set at start-up) on the same
config and a fixed synthetic batch; compile time is excluded, the median of `--steps` timed
steps is reported. Prints a table, then one JSON line of the figures.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "demo", "clip_fashion_mnist.py")
TCMALLOC = f"/usr/lib/{os.uname().machine}-linux-gnu/libtcmalloc_minimal.so.4"


def measure(steps: int, overrides: list[str]) -> dict:
    """In this process: compile the demo's train step, time `steps` steps on a fixed batch."""
    import jax
    import numpy as np

    from vlmjax.config import config_from_args
    from vlmjax.parallel.mesh import batch_sharding, make_mesh, replicated
    from vlmjax.train.loop import _step_spec
    from vlmjax.train.state import model_builder, state_layout
    from vlmjax.train.step import jit_train_step

    cfg = config_from_args(CONFIG, overrides).to_dict()
    mesh, rules = make_mesh(cfg["mesh"]), cfg["sharding_rules"]
    vocab, length, batch = 736, cfg["tokenizer"]["context_length"], cfg["train"]["batch_size"]
    image = cfg["model"]["image"]
    layout = state_layout(cfg, vocab, length, mesh)
    state = layout.init(cfg["seed"], model_builder(cfg, vocab, length))
    rng = np.random.default_rng(0)
    host = {
        "image": rng.integers(0, 255, (batch, image["image_size"], image["image_size"],
                                       image["channels"])).astype(np.uint8),
        "text": rng.integers(1, vocab, (batch, length)).astype(np.int32),
        "text_mask": np.ones((batch, length), bool),
        "label": np.zeros(batch, np.int32),
    }
    data = {k: jax.device_put(v, batch_sharding(mesh, rules)) for k, v in host.items()}
    step = jit_train_step(_step_spec(cfg, layout, mesh), layout.sharding,
                          batch_sharding(mesh, rules), replicated(mesh))
    start = time.perf_counter()
    state, metrics = step(state, data)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = step(state, data)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"step_s": median, "images_per_s": batch / median, "compile_s": compile_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    overrides = [a[len("--config."):] for a in rest if a.startswith("--config.")]
    if args.child:
        print(json.dumps(measure(args.steps, overrides)))
        return
    if not os.path.exists(TCMALLOC):
        sys.exit(f"{TCMALLOC} is missing: apt-get install libtcmalloc-minimal4")
    results = {}
    for name, preload in (("glibc", ""), ("tcmalloc", TCMALLOC)):
        env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
        if preload:
            env["LD_PRELOAD"] = preload
        out = subprocess.run([sys.executable, __file__, "--child", f"--steps={args.steps}", *rest],
                             env=env, capture_output=True, text=True, check=True, cwd=REPO)
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{'allocator':<10} {'step (s)':>9} {'images/s':>9} {'compile (s)':>12}")
    for name, r in results.items():
        print(f"{name:<10} {r['step_s']:>9.3f} {r['images_per_s']:>9.0f} {r['compile_s']:>12.1f}")
    speedup = results["glibc"]["step_s"] / results["tcmalloc"]["step_s"]
    print(f"tcmalloc speed-up: {speedup:.2f}x")
    print(json.dumps({"speedup": round(speedup, 3), **{
        k: {m: round(v, 4) for m, v in r.items()} for k, r in results.items()}}))


if __name__ == "__main__":
    main()
