"""The GPU benchmark behind bench/gpu.sh: vlmjax and open_clip train steps side by side on one
NVIDIA GPU, and the contrastive loss's memory at B = 65,536.

    bash bench/gpu.sh [--rows vit_b16_clip,demo_clip] [--steps 10] [--peak_tflops 989]
    bash bench/gpu.sh --dry_run     # on CPU: everything built, one tiny step timed per side

Rows (bfloat16 compute on float32 master weights on both sides: vlmjax `model.dtype=bfloat16`,
open_clip under `torch.autocast("cuda", torch.bfloat16)`, i.e. its `amp_bf16`):
- vit_b16_clip: ViT-B/16 CLIP (224 px, 77 tokens, 49,408-token vocabulary) at batch 256;
- demo_clip: the demo config (configs/demo/clip_fashion_mnist.py) at its batch 256.
Each side runs in its own process, one after the other, so neither holds GPU memory while the
other is timed: the vlmjax worker of bench/train_step.py, then bench/open_clip_step.py. Per
side: build, 2 warm-up steps (compilation excluded), then `--steps` timed steps; the figure is
the median. MFU = matmul FLOPs per step (counted from vlmjax's jaxpr, as bench/train_step.py)
/ step time / the GPU's bf16 dense peak (the table below by device name, or --peak_tflops);
the measured rate of an 8192^3 bf16 `jnp.dot` is printed next to it.

Contrastive memory: value_and_grad of the CLIP loss on B = 65,536 pairs of 512-d float32
embeddings, "chunked" (vlmjax's default) and "dense" [B, B] logits when XLA's estimate fits the
device; XLA's memory estimate, the device's peak bytes in use and the time, each in its own
process. Prints a table, then one JSON line.
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

# bf16 dense tensor-core peaks (TFLOP/s, no sparsity) by a substring of the device name.
BF16_PEAK_TFLOPS = {"H200": 989.4, "H100 PCIe": 756.0, "H100": 989.4, "GH200": 989.4,
                    "B200": 2250.0, "A100": 312.0, "L40S": 362.1, "L4": 121.0, "A10G": 70.0,
                    "A10": 125.0, "RTX 4090": 165.2, "RTX 6000 Ada": 364.2}
VIT_B16 = [o.replace("B/32", "B/16") for o in bench.VIT_B32]
ROWS = {  # name -> (config spec, overrides, batch)
    "vit_b16_clip": (f"{bench.DEMO}/clip_fashion_mnist.py", VIT_B16, 256),
    "demo_clip": (f"{bench.DEMO}/clip_fashion_mnist.py", [], 256),
}
# --dry_run: the same code paths at sizes a CPU times in seconds.
DRY_OVERRIDES = ["model.image.variant=", "model.image.width=32", "model.image.depth=1",
                 "model.image.heads=2", "model.image.mlp_dim=64", "model.image.image_size=32",
                 "model.image.patch_size=16", "model.text.width=32", "model.text.depth=1",
                 "model.text.heads=2", "model.text.mlp_dim=64", "model.embed_dim=32",
                 "tokenizer.context_length=8", "tokenizer.vocab_size=64"]
CONTRASTIVE_DIM = 512


def peak_tflops(name: str, override: float) -> float:
    """The device's bf16 dense peak: --peak_tflops, else the table entry its name contains."""
    if override:
        return override
    for key in sorted(BF16_PEAK_TFLOPS, key=len, reverse=True):
        if key in name:
            return BF16_PEAK_TFLOPS[key]
    return 0.0


def row_spec(name: str, dry_run: bool) -> tuple[str, list[str], int]:
    spec, overrides, batch = ROWS[name]
    if dry_run:
        return spec, [*overrides, *DRY_OVERRIDES, "model.image.channels=3"], 2
    return spec, overrides, batch


def write_row_batch(spec: str, overrides: list[str], batch: int, path: str) -> None:
    from vlmjax.config import config_from_args

    cfg = config_from_args(spec, overrides).to_dict()
    image, tok = cfg["model"]["image"], cfg["tokenizer"]
    bench.write_batch(path, batch, image["image_size"], image["channels"], tok["vocab_size"],
                      tok["context_length"])


def time_side(worker: bench.Worker, steps: int, **ask) -> list[float]:
    return worker.ask(cmd="time", steps=steps, **ask)["times"]


def measure_row(name: str, args, tmp: str, env: dict) -> dict:
    """vlmjax, then open_clip, on one row: median step time, images/s, MFU."""
    spec, overrides, batch = row_spec(name, args.dry_run)
    overrides = [*overrides, "model.dtype=bfloat16"]
    path = os.path.join(tmp, f"{name}.npz")
    write_row_batch(spec, overrides, batch, path)
    vlm = bench.Worker([sys.executable, os.path.join(BENCH, "train_step.py"), "--worker",
                        "--threads=0"], env)
    try:
        built = vlm.ask(cmd="build", spec=spec, overrides=overrides, batch_size=batch, batch=path)
        vlm_times = time_side(vlm, args.steps)
    finally:
        vlm.close()
    ref = bench.Worker([bench.OPEN_CLIP_PYTHON, os.path.join(BENCH, "open_clip_step.py")], env)
    try:
        ref_built = ref.ask(cmd="build", arch=built["arch"], batch=path, threads=args.threads,
                            compile=False, device=args.device)
        ref_times = time_side(ref, args.steps, mode="eager")
    finally:
        ref.close()
    vlm_s, ref_s = statistics.median(vlm_times), statistics.median(ref_times)
    return {"batch": batch, "vlmjax_s": vlm_s, "open_clip_s": ref_s, "ratio": vlm_s / ref_s,
            "vlmjax_img_s": batch / vlm_s, "open_clip_img_s": batch / ref_s,
            "flops": built["flops"], "params": built["params"],
            "open_clip_params": ref_built["params"], "vlmjax_compile_s": built["compile_s"],
            "versions": {"jax": built["jax"], "torch": ref_built["torch"],
                         "open_clip": ref_built["open_clip"]}}


def contrastive_child(implementation: str, batch: int) -> dict:
    """In this process: memory and time of the CLIP loss + gradient at `batch` on the device."""
    import jax
    import jax.numpy as jnp

    from vlmjax.objectives.contrastive import softmax_contrastive

    keys = jax.random.split(jax.random.key(0), 2)
    x, y = (jax.random.normal(k, (batch, CONTRASTIVE_DIM), jnp.float32) for k in keys)
    x = x / jnp.linalg.norm(x, axis=1, keepdims=True)
    y = y / jnp.linalg.norm(y, axis=1, keepdims=True)
    scale = jnp.float32(14.3)

    def loss(x: jax.Array, y: jax.Array, scale: jax.Array) -> jax.Array:
        return softmax_contrastive(x, y, scale, implementation=implementation)[0]

    compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).lower(x, y, scale).compile()
    analysis = compiled.memory_analysis()
    xla = (analysis.temp_size_in_bytes + analysis.argument_size_in_bytes
           + analysis.output_size_in_bytes)
    device = jax.devices()[0]
    stats = device.memory_stats() or {}
    limit = stats.get("bytes_limit", 0)
    out = {"device": device.device_kind, "xla_gib": xla / 2 ** 30, "limit_gib": limit / 2 ** 30}
    if limit and xla > 0.95 * limit:
        return {**out, "fits": False}
    jax.block_until_ready(compiled(x, y, scale))  # warm-up
    start = time.perf_counter()
    jax.block_until_ready(compiled(x, y, scale))
    stats = device.memory_stats() or {}
    return {**out, "fits": True, "seconds": time.perf_counter() - start,
            "peak_gib": stats.get("peak_bytes_in_use", 0) / 2 ** 30}


def contrastive_memory(batch: int, env: dict) -> dict:
    results = {}
    for implementation in ("chunked", "dense"):
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--contrastive_child",
                              implementation, str(batch)], env=env, capture_output=True,
                             text=True, cwd=bench.REPO)
        lines = out.stdout.strip().splitlines()
        results[implementation] = (json.loads(lines[-1]) if out.returncode == 0 and lines else
                                   {"error": (out.stderr.strip().splitlines() or ["?"])[-1]})
    return results


def matmul_tflops(size: int) -> float:
    return bench.matmul_peak("bfloat16", size=size) / 1e12


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=8, help="torch's CPU threads")
    parser.add_argument("--contrastive_batch", type=int, default=65536)
    parser.add_argument("--peak_tflops", type=float, default=0.0)
    parser.add_argument("--dry_run", action="store_true")
    parser.add_argument("--contrastive_child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.contrastive_child:
        implementation, batch = args.contrastive_child
        print(json.dumps(contrastive_child(implementation, int(batch))))
        return
    args.device = "cpu" if args.dry_run else "cuda"
    if args.dry_run:
        args.steps, args.contrastive_batch, args.threads = 1, 512, 2
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
           "JAX_PLATFORMS": "cpu" if args.dry_run else "cuda"}
    os.environ.update(env)
    import jax

    device = jax.devices()[0]
    peak = peak_tflops(device.device_kind, args.peak_tflops)
    measured = matmul_tflops(512 if args.dry_run else 8192)
    print(f"device: {device.device_kind} ({device.platform}); bf16 dense peak "
          f"{peak or float('nan'):.0f} TFLOP/s; measured bf16 matmul {measured:.1f} TFLOP/s",
          flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.rows.split(","):
            start = time.perf_counter()
            results[name] = measure_row(name, args, tmp, env)
            print(f"  {name} done in {time.perf_counter() - start:.0f} s", file=sys.stderr,
                  flush=True)
    memory = contrastive_memory(args.contrastive_batch, env)

    print(f"train step, bfloat16 compute, median of {args.steps} steps after warm-up")
    print(f"{'row':<14}{'batch':>6}{'vlmjax s':>10}{'open_clip s':>12}{'ratio':>7}"
          f"{'img/s vlmjax':>13}{'img/s oc':>10}{'TFLOP/step':>11}{'MFU':>7}{'MFU oc':>8}")
    def mfu(r: dict, seconds: float) -> float:
        return r["flops"] / seconds / (peak * 1e12) if peak else float("nan")

    for name, r in results.items():
        print(f"{name:<14}{r['batch']:>6}{r['vlmjax_s']:>10.4f}{r['open_clip_s']:>12.4f}"
              f"{r['ratio']:>7.2f}{r['vlmjax_img_s']:>13.0f}{r['open_clip_img_s']:>10.0f}"
              f"{r['flops'] / 1e12:>11.2f}{mfu(r, r['vlmjax_s']):>7.1%}{mfu(r, r['open_clip_s']):>8.1%}")
    print(f"contrastive loss + gradient, B = {args.contrastive_batch:,}, D = {CONTRASTIVE_DIM}:")
    for implementation, m in memory.items():
        if "error" in m:
            print(f"  {implementation:<8} failed: {m['error']}")
        elif not m["fits"]:
            print(f"  {implementation:<8} does not fit: XLA needs {m['xla_gib']:.1f} GiB of "
                  f"{m['limit_gib']:.1f}")
        else:
            print(f"  {implementation:<8} XLA {m['xla_gib']:.2f} GiB, device peak "
                  f"{m['peak_gib']:.2f} GiB, {m['seconds']:.3f} s")
    print(json.dumps({"device": device.device_kind, "peak_tflops": peak,
                      "measured_matmul_tflops": measured, "dry_run": args.dry_run,
                      "rows": results, "contrastive": memory}))


if __name__ == "__main__":
    main()
