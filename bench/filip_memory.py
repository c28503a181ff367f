"""Peak memory and time of FILIP loss + gradient: the naive [B, n, B, m] tensor vs tiles.

    .venv/bin/python bench/filip_memory.py [--sizes 256,512,1024,2048,4096] [--chunk-size 32]

FILIP's shapes of the issue: n = 50 image tokens, m = 32 text tokens (random caption lengths,
so padding is exercised), D = 256. Each (implementation, B) case runs in its own process on
CPU: value_and_grad of the `filip` objective w.r.t. both token sets and both temperatures.
Per case: the peak RSS growth while running over the RSS just before (inputs and compiled
program resident), the whole process's peak RSS, XLA's `memory_analysis()` (temp + arguments
+ outputs) and the median time (a warm-up run first below B = 2048, then 3 runs; one run from
B = 2048). "dense" (the naive formula) is not run where XLA says it needs over --max-gib.
Prints a table, then one JSON line of the figures.
"""

import argparse
import json
import sys

from memory_probe import GIB, profile_compiled, run_child

N_IMAGE, N_TEXT, DIM = 50, 32, 256


def measure(implementation: str, batch: int, chunk_size: int, max_gib: float) -> dict:
    """In this process: compile value_and_grad of the filip loss, report memory and time."""
    import jax
    import jax.numpy as jnp

    from vlmjax.objectives.filip import filip_loss

    def unit(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        x = jax.random.normal(key, shape, jnp.float32)
        return x / jnp.linalg.norm(x, axis=-1, keepdims=True)

    keys = jax.random.split(jax.random.key(0), 4)
    # Weakly correlated pairs (token cosine ~0.1 within a pair, ~0 across): a loss far from 0.
    shared = 0.35 * unit(keys[0], (batch, 1, DIM))
    x = unit(keys[1], (batch, N_IMAGE, DIM)) + shared
    y = unit(keys[2], (batch, N_TEXT, DIM)) + shared
    x, y = x / jnp.linalg.norm(x, axis=-1, keepdims=True), y / jnp.linalg.norm(y, axis=-1, keepdims=True)
    lengths = jax.random.randint(keys[3], (batch,), 1, N_TEXT + 1)
    mask = jnp.arange(N_TEXT)[None] < lengths[:, None]
    scales = (jnp.float32(30.0), jnp.float32(25.0))
    jax.block_until_ready((x, y, mask))
    options = {"implementation": implementation, "chunk_size": chunk_size}

    def fn(x: jax.Array, y: jax.Array, scale_i: jax.Array, scale_t: jax.Array) -> jax.Array:
        outputs = {"image_tokens": x, "text_tokens": y, "logit_scale": scale_i,
                   "logit_scale_t2i": scale_t}
        return filip_loss(outputs, options, {"text_mask": mask})[0]

    compiled = jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2, 3))).lower(x, y, *scales).compile()
    out = profile_compiled(compiled, (x, y, *scales), 3 if batch < 2048 else 1, max_gib)
    if out["fits"]:
        out["loss"] = float(out.pop("result")[0])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="256,512,1024,2048,4096")
    parser.add_argument("--chunk-size", type=int, default=32)
    parser.add_argument("--max-gib", type=float, default=16.0, help="dense runs only below this")
    parser.add_argument("--child", nargs=2, metavar=("IMPL", "B"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        impl, batch = args.child
        print(json.dumps(measure(impl, int(batch), args.chunk_size, args.max_gib)))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict = {"dense": {}, "chunked": {}}
    for batch in sizes:
        for impl in ("dense", "chunked"):
            results[impl][str(batch)] = run_child(__file__, [
                impl, str(batch), f"--chunk-size={args.chunk_size}", f"--max-gib={args.max_gib}"])
            print(f"  done {impl} B={batch}", file=sys.stderr, flush=True)

    naive_gib = {b: b * N_IMAGE * b * N_TEXT * 4 / GIB for b in sizes}
    print(f"FILIP loss + gradient, n={N_IMAGE}, m={N_TEXT}, D={DIM}, chunk {args.chunk_size}")
    print(f"{'implementation':<10} {'B':>5} {'[B,n,B,m] GiB':>14} {'run peak +GiB':>14} "
          f"{'process peak GiB':>17} {'XLA GiB':>8} {'seconds':>8} {'loss':>8}")
    for name, rows in results.items():
        for batch, r in rows.items():
            head = f"{name:<10} {batch:>5} {naive_gib[int(batch)]:>14.1f}"
            if not r["fits"]:
                print(f"{head}  does not fit (XLA needs {r['xla_gib']:.1f} GiB)")
                continue
            print(f"{head} {r['peak_gib']:>14.3f} {r['rss_gib']:>17.3f} {r['xla_gib']:>8.3f} "
                  f"{r['seconds']:>8.2f} {r['loss']:>8.4f}")
    summary: dict = {name: {b: ({k: round(v, 4) for k, v in r.items() if k in (
        "peak_gib", "rss_gib", "xla_gib", "seconds", "loss")} if r["fits"] else
        {"fits": False, "xla_gib": round(r["xla_gib"], 2)}) for b, r in rows.items()}
        for name, rows in results.items()}
    for b in map(str, sizes):
        dense, chunked = results["dense"][b], results["chunked"][b]
        if dense["fits"]:
            summary[f"ratio_{b}"] = round(chunked["seconds"] / dense["seconds"], 3)
            summary[f"loss_diff_{b}"] = abs(chunked["loss"] - dense["loss"])
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
