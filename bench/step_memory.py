"""Per-device memory of a full-size train step by compute dtype and remat policy (compile only).

    .venv/bin/python bench/step_memory.py [--variant B/16] [--batch 16] [--config.key=value ...]

Lowers and compiles the real train step for one device with abstract inputs (nothing is
allocated or run) and reports XLA's buffer assignment: arguments (parameters, Adam moments,
batch) and temporaries (activations kept for the backward pass, gradients, workspace), at
`--batch` and twice that, so the growth per example (the slope) separates activations from
the fixed part. These are the figures behind the README's "Scaling" recipes. CPU XLA's buffer
assignment is not the TPU's or GPU's, so read them as estimates of the ratios and orders of
magnitude. Prints a table, then one JSON line of the figures.
"""

import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# (text width, depth, heads, mlp, joint embedding) of the open_clip model of each ViT size.
TEXT_TOWERS = {"B": (512, 12, 8, 2048, 512), "L": (768, 12, 12, 3072, 768),
               "H": (1024, 24, 16, 4096, 1024), "g": (1024, 24, 16, 4096, 1024)}
SETTINGS = [("float32", "none"), ("bfloat16", "none"), ("bfloat16", "dots_no_batch"),
            ("bfloat16", "full")]
GIB = 2 ** 30


def _config(variant: str, dtype: str, remat: str, batch: int, overrides: list[str]) -> dict:
    from vlmjax.config import base_config
    from vlmjax.config.loading import apply_override
    c = base_config()
    patch = int(variant.split("/")[1])
    c.model.image.update(variant=variant, patch_size=patch, image_size=224, width=0, depth=0,
                         heads=0, mlp_dim=0)
    width, depth, heads, mlp, joint = TEXT_TOWERS[variant.split("/")[0]]
    c.model.text.update(width=width, depth=depth, heads=heads, mlp_dim=mlp)
    c.model.update(embed_dim=joint, dtype=dtype, remat=remat, scan_layers=True)
    c.tokenizer.context_length = 77
    c.train.update(batch_size=batch, num_steps=100_000)
    c.mesh.update(data=1, fsdp=1, tensor=1)
    for item in overrides:
        key, _, raw = item.partition("=")
        apply_override(c, key, raw)
    return c.to_dict()


def measure(variant: str, dtype: str, remat: str, batch: int, overrides: list[str]) -> dict:
    """Compiles the one-device train step abstractly; XLA's memory figures in bytes."""
    import jax
    import jax.numpy as jnp

    from vlmjax.parallel.mesh import batch_sharding, make_mesh, replicated
    from vlmjax.train.loop import _step_spec
    from vlmjax.train.state import state_layout
    from vlmjax.train.step import jit_train_step

    cfg = _config(variant, dtype, remat, batch, overrides)
    mesh = make_mesh(cfg["mesh"], jax.devices()[:1])
    layout = state_layout(cfg, 49408, 77, mesh)
    sharding = batch_sharding(mesh, cfg["sharding_rules"])
    size = cfg["model"]["image"]["image_size"]
    abstract_batch = {
        "image": jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8, sharding=sharding),
        "text": jax.ShapeDtypeStruct((batch, 77), jnp.int32, sharding=sharding),
        "text_mask": jax.ShapeDtypeStruct((batch, 77), jnp.bool_, sharding=sharding),
    }
    step = jit_train_step(_step_spec(cfg, layout, mesh), layout.sharding, sharding, replicated(mesh))
    start = time.perf_counter()
    analysis = step.lower(layout.abstract, abstract_batch).compile().memory_analysis()
    n_params = sum(x.size for x in jax.tree.leaves(layout.abstract["params"]))
    return {"params": int(n_params), "argument_bytes": analysis.argument_size_in_bytes,
            "temp_bytes": analysis.temp_size_in_bytes, "output_bytes": analysis.output_size_in_bytes,
            "compile_seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="B/16")
    parser.add_argument("--batch", type=int, default=16, help="examples per device")
    parser.add_argument("--child", nargs=2, metavar=("DTYPE", "REMAT"), help=argparse.SUPPRESS)
    args, overrides = parser.parse_known_args()
    overrides = [o.removeprefix("--config.") for o in overrides]
    if args.child:
        print(json.dumps(measure(args.variant, *args.child, args.batch, overrides)))
        return
    import subprocess
    rows = {}
    for dtype, remat in SETTINGS:  # one process each: compiles do not share caches or memory
        for batch in (args.batch, 2 * args.batch):
            out = subprocess.run([sys.executable, __file__, "--variant", args.variant, "--batch",
                                  str(batch), "--child", dtype, remat,
                                  *(f"--config.{o}" for o in overrides)],
                                 capture_output=True, text=True, check=True,
                                 env={**os.environ, "JAX_PLATFORMS": "cpu"})
            rows[(dtype, remat, batch)] = json.loads(out.stdout.strip().splitlines()[-1])
    first = next(iter(rows.values()))
    print(f"{args.variant} CLIP, {first['params'] / 1e6:.1f}M parameters, one device, "
          "XLA CPU buffer assignment (compile only)")
    print(f"{'dtype/remat':<24}{'arguments GiB':>14}{'temporaries GiB':>24}{'MiB/example':>13}"
          f"{'fixed GiB':>11}")
    figures = {}
    b = args.batch
    for dtype, remat in SETTINGS:
        small, large = rows[(dtype, remat, b)], rows[(dtype, remat, 2 * b)]
        slope = (large["temp_bytes"] - small["temp_bytes"]) / b
        fixed = small["temp_bytes"] - slope * b
        name = f"{dtype}/{remat}"
        temps = f"{small['temp_bytes'] / GIB:.2f} @{b} / {large['temp_bytes'] / GIB:.2f} @{2 * b}"
        print(f"{name:<24}{small['argument_bytes'] / GIB:>14.2f}{temps:>24}"
              f"{slope / 2 ** 20:>13.1f}{fixed / GIB:>11.2f}")
        figures[name] = {"argument_gib": round(small["argument_bytes"] / GIB, 3),
                         "activation_mib_per_example": round(slope / 2 ** 20, 1),
                         "fixed_temp_gib": round(fixed / GIB, 3)}
    print(json.dumps({"variant": args.variant, "params": first["params"], "rows": figures}))


if __name__ == "__main__":
    main()
