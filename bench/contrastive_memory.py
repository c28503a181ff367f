"""Peak memory and time of contrastive loss + gradient: dense [B, B] logits vs chunked tiles.

    .venv/bin/python bench/contrastive_memory.py [--sizes 4096,16384,65536] [--chunk-size 1024]

Each (implementation, loss, B) case runs in its own process on CPU so its peak is clean. Per
case: the peak RSS growth while running value_and_grad (w.r.t. both embeddings and the scale)
over the RSS just before (inputs and compiled program resident; the peak counter is reset via
/proc/self/clear_refs), the whole process's peak RSS (Python, JAX, inputs, compile included),
XLA's `memory_analysis()` (temp + argument + output bytes) and the median time (D = 512; a
warm-up run first, fewer runs at large B, one run and no warm-up at B >= 65536). Dense is not
run where XLA says it needs over --max-gib. Prints a table, then one JSON line of the figures.

chunk_size 1024 (the default of config.objective.chunk_size): a 4 MiB fp32 tile keeps the
per-tile matmuls ([1024, 512] x [512, 1024]) as fast as one big matmul on CPU; 512 and 2048 time
the same at B = 4096, and the tile is negligible next to the [B, D] inputs and gradients.
"""

import argparse
import json
import sys

from memory_probe import profile_compiled, run_child

DIM = 512


def measure(implementation: str, loss: str, batch: int, chunk_size: int, max_gib: float) -> dict:
    """In this process: compile value_and_grad of one loss, report its memory and median time."""
    import jax
    import jax.numpy as jnp

    from vlmjax.objectives.contrastive import softmax_contrastive
    from vlmjax.objectives.sigmoid import sigmoid_contrastive

    def unit(key: jax.Array) -> jax.Array:
        x = jax.random.normal(key, (batch, DIM), jnp.float32)
        return x / jnp.linalg.norm(x, axis=1, keepdims=True)

    key_x, key_y = jax.random.split(jax.random.key(0))
    x = unit(key_x)
    y = jnp.asarray(unit(key_y) + x)  # correlated pairs: accuracies are neither 0 nor 1
    y = y / jnp.linalg.norm(y, axis=1, keepdims=True)
    scale, bias = jnp.float32(14.3), jnp.float32(-10.0)
    jax.block_until_ready((x, y))

    def fn(x: jax.Array, y: jax.Array, scale: jax.Array) -> jax.Array:
        if loss == "clip":
            return softmax_contrastive(x, y, scale, implementation=implementation,
                                       chunk_size=chunk_size)[0]
        return sigmoid_contrastive(x, y, scale, bias, implementation=implementation,
                                   chunk_size=chunk_size)[0]

    compiled = jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2))).lower(x, y, scale).compile()
    runs = 5 if batch <= 4096 else 2 if batch < 65536 else 1
    out = profile_compiled(compiled, (x, y, scale), runs, max_gib)
    out.pop("result", None)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="4096,16384,65536")
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--max-gib", type=float, default=12.0, help="dense runs only below this")
    parser.add_argument("--siglip-max", type=int, default=16384, help="largest B for siglip chunked")
    parser.add_argument("--child", nargs=3, metavar=("IMPL", "LOSS", "B"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        impl, loss, batch = args.child
        print(json.dumps(measure(impl, loss, int(batch), args.chunk_size, args.max_gib)))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    cases = [(impl, "clip", b) for b in sizes for impl in ("dense", "chunked")]
    cases += [("chunked", "siglip", b) for b in sizes if b <= args.siglip_max]
    results: dict = {}
    for impl, loss, batch in cases:
        name = impl if loss == "clip" else f"{impl}_{loss}"
        results.setdefault(name, {})[str(batch)] = run_child(__file__, [
            impl, loss, str(batch), f"--chunk-size={args.chunk_size}", f"--max-gib={args.max_gib}"])
        print(f"  done {name} B={batch}", file=sys.stderr, flush=True)

    print(f"{'implementation':<16} {'B':>6} {'run peak +GiB':>14} {'process peak GiB':>17} "
          f"{'XLA GiB':>8} {'seconds':>8} {'runs':>5}")
    for name, rows in results.items():
        for batch, r in rows.items():
            if not r["fits"]:
                print(f"{name:<16} {batch:>6}  does not fit (needs {r['xla_gib']:.1f} GiB)")
                continue
            print(f"{name:<16} {batch:>6} {r['peak_gib']:>14.3f} {r['rss_gib']:>17.3f} "
                  f"{r['xla_gib']:>8.3f} {r['seconds']:>8.3f} {r['runs']:>5}")
    summary: dict = {name: {b: ({k: round(v, 4) for k, v in r.items() if k in (
        "peak_gib", "rss_gib", "xla_gib", "seconds")} if r["fits"] else
        {"fits": False, "xla_gib": round(r["xla_gib"], 2)}) for b, r in rows.items()}
        for name, rows in results.items()}
    for b in map(str, sizes):
        dense, chunked = results.get("dense", {}).get(b), results.get("chunked", {}).get(b)
        if dense and chunked and dense["fits"]:
            summary[f"ratio_{b}"] = round(chunked["seconds"] / dense["seconds"], 3)
    if "ratio_4096" in summary:
        print(f"chunked / dense time at B=4096: {summary['ratio_4096']:.2f}x")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
