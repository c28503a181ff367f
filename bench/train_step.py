"""Steady-state train step of vlmjax against open_clip on the same architecture, batch and cores.

    source launch/env.sh && .venv/bin/python bench/train_step.py
        [--rows demo_clip,vit_b32_clip,demo_coca,demo_filip,demo_flip50,demo_flip75]
        [--rounds 3] [--steps 4] [--threads 2] [--compile-rows demo_clip|all|none]
        [--dtype float32|bfloat16] [--out results.jsonl] [--config.key=value ...]

Two worker processes are pinned to the same `--threads` cores: this script with `--worker`
(vlmjax's jitted train step on one CPU device) and bench/open_clip_step.py under
`.venv-openclip/bin/python` (open_clip's CLIP / CoCa + loss + AdamW, eager, and under
`torch.compile` for the rows in `--compile-rows`; `torch.set_num_threads(threads)`). Both
train on the same synthetic batch (uint8 images, token ids of random length padded with 0).
Per row they build and warm up (compile excluded), then time `--steps` steps in `--rounds`
interleaved rounds (vlmjax, open_clip eager, open_clip compiled, in turn) so that both see
the same load from other processes; each figure is the median over all timed steps (rounds x
steps >= 10). Each round also times a 2048^3 `jnp.dot` on the vlmjax side (and open_clip's
worker a torch matmul once): the machine's measured matmul rate in the step's dtype.

`--dtype bfloat16` trains vlmjax with `model.dtype=bfloat16` (bfloat16 compute, float32 master
weights and Adam state) and open_clip under `torch.autocast("cpu", torch.bfloat16)` (open_clip's
`amp_bf16`); the matmul rates are then of bfloat16 inputs with float32 accumulation. The
demo_flip rows are demo_clip with FLIP's patch masking (`model.image.mask_ratio`, open_clip's
`patch_dropout`) at 0.5 and 0.75.

Model FLOPs per step are counted from the jaxpr of vlmjax's train step: 2 x M x N x K for every
`dot_general` (forward and backward, attention and loss included; elementwise work excluded).
open_clip does the same matmuls up to the differences printed under the table. MFU = FLOPs /
step time / the higher of the two frameworks' measured matmul rates. The first line names the
host (CPU model, ISA flags: avx2, avx512f, avx512_bf16, amx; allocator; load average); the
threads of XLA's pool and torch's are printed with the table. Prints a table, then as the last
line one JSON object of the figures (also appended to `--out` when given).
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
OPEN_CLIP_PYTHON = os.path.join(REPO, ".venv-openclip", "bin", "python")
DEMO = os.path.join(REPO, "configs", "demo")
VIT_B32 = ["model.image.variant=B/32", "model.image.width=0", "model.image.depth=0",
           "model.image.heads=0", "model.image.mlp_dim=0", "model.image.image_size=224",
           "model.image.channels=3", "model.image.pool=cls", "model.image.ln_pre=true",
           "model.text.width=512", "model.text.depth=12", "model.text.heads=8",
           "model.text.mlp_dim=2048", "model.embed_dim=512", "tokenizer.context_length=77",
           "tokenizer.vocab_size=49408"]
# name -> (config spec, overrides, batch, what differs in open_clip's model)
ROWS = {
    "demo_clip": (f"{DEMO}/clip_fashion_mnist.py", [], 256,
                  "open_clip: class token kept under average pooling (17 tokens, ours 16), "
                  "no patch-embedding bias"),
    "vit_b32_clip": (f"{DEMO}/clip_fashion_mnist.py", VIT_B32, 8,
                     "open_clip: no patch-embedding bias"),
    # open_clip's CoCa needs embed_dim = decoder width and has one pooler (our "open_clip" layout).
    "demo_coca": (f"{DEMO}/coca_fashion_mnist.py:open_clip", ["model.embed_dim=64"], 256,
                  "embed_dim 64 and pooler=open_clip (open_clip needs embed_dim = decoder width); "
                  "open_clip: 17 ViT tokens, CLS with a position embedding, decoder on L-1 tokens"),
    "demo_filip": (f"{DEMO}/filip_fashion_mnist.py", [], 256,
                   "open_clip towers + a dense PyTorch FILIP loss written in "
                   "bench/open_clip_step.py; open_clip: 17 ViT tokens"),
    "demo_flip50": (f"{DEMO}/clip_fashion_mnist.py", ["model.image.mask_ratio=0.5"], 256,
                    "FLIP masking 0.5: 8 of 16 patches (open_clip patch_dropout: 8 + class token)"),
    "demo_flip75": (f"{DEMO}/clip_fashion_mnist.py", ["model.image.mask_ratio=0.75"], 256,
                    "FLIP masking 0.75: 4 of 16 patches (open_clip patch_dropout: 4 + class token)"),
}
DEFAULT_ROWS = "demo_clip,vit_b32_clip,demo_coca,demo_filip,demo_flip50,demo_flip75"


ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")


def cpu_info(path: str = "/proc/cpuinfo") -> dict:
    """The CPU model, its family / model / stepping numbers (a VM's model name, e.g. "AMD EPYC",
    may not say the generation: family 25 model 17 is Zen 4), its logical CPU count and which
    of ISA_FLAGS it reports (Linux)."""
    model, flags, ids = "unknown", set(), {}
    labels = {"cpu family": "family", "model": "model", "stepping": "stepping"}
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model == "unknown":
                    model = value.strip()
                elif key in labels and labels[key] not in ids:
                    ids[labels[key]] = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    family = " ".join(f"{label} {ids[label]}" for label in labels.values() if label in ids)
    return {"model": model, "family": family, "cpus": os.cpu_count(),
            "isa": [f for f in ISA_FLAGS if f in flags]}


def xla_threads() -> int:
    """Threads of XLA:CPU's intra-op pool in this process (named XLAEigen), after a program ran."""
    count = 0
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/comm") as f:
                count += "XLAEigen" in f.read()
        except OSError:
            pass
    return count


def host_summary(threads: int) -> str:
    """One line naming the host: CPU model, ISA flags, cores used, allocator and load."""
    info = cpu_info()
    preload = os.environ.get("LD_PRELOAD", "")
    allocator = "tcmalloc" if "tcmalloc" in preload else "glibc malloc"
    load = "/".join(f"{x:.2f}" for x in os.getloadavg())
    family = f" ({info['family']})" if info["family"] else ""
    return (f"host: {info['model']}{family}, {info['cpus']} logical CPUs, "
            f"ISA {' '.join(info['isa']) or '-'}"
            f"; {threads} pinned per side; allocator {allocator}; load average {load}")


def pin(threads: int) -> list[int]:
    """Restricts this process to the first `threads` of its CPUs (before jax/torch start);
    threads <= 0 leaves it on all of them (the GPU bench)."""
    if threads <= 0:
        return sorted(os.sched_getaffinity(0))
    cpus = sorted(os.sched_getaffinity(0))[:threads]
    os.sched_setaffinity(0, cpus)
    return cpus


# ---------------------------------------------------------------- vlmjax worker (this file)

def dot_flops(jaxpr) -> int:
    """2 * M * N * K summed over every dot_general of a closed jaxpr, sub-jaxprs included."""
    import jax.extend
    import numpy as np

    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (lhs_contract, _), (lhs_batch, _) = eqn.params["dimension_numbers"]
            lhs, out = eqn.invars[0].aval, eqn.outvars[0].aval
            k = int(np.prod([lhs.shape[d] for d in lhs_contract]))
            total += 2 * int(np.prod(out.shape)) * k
        repeat = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            total += repeat * dot_flops(sub)
    return total


def matmul_peak(dtype: str = "float32", size: int = 2048, repeats: int = 3) -> float:
    """Best FLOP/s of a jitted size^3 jnp.dot over `repeats` runs (float32 accumulation)."""
    import jax
    import jax.numpy as jnp

    a = jnp.ones((size, size), dtype)
    dot = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
    jax.block_until_ready(dot(a, a))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(dot(a, a))
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best


class VlmjaxRow:
    """vlmjax's jitted train step for one config on a fixed batch."""

    def __init__(self, spec: str, overrides: list[str], batch_size: int, batch_path: str):
        import jax
        import numpy as np

        from vlmjax.config import config_from_args
        from vlmjax.models.sizes import resolve_vit
        from vlmjax.parallel.mesh import batch_sharding, make_mesh, replicated
        from vlmjax.train.loop import _step_spec
        from vlmjax.train.state import model_builder, state_layout
        from vlmjax.train.step import jit_train_step

        overrides = [*overrides, f"train.batch_size={batch_size}", "mesh.data=1"]
        cfg = config_from_args(spec, overrides).to_dict()
        mesh, rules = make_mesh(cfg["mesh"], jax.devices()[:1]), cfg["sharding_rules"]
        vocab, length = cfg["tokenizer"]["vocab_size"], cfg["tokenizer"]["context_length"]
        image = resolve_vit(cfg["model"]["image"])
        layout = state_layout(cfg, vocab, length, mesh)
        self.state = layout.init(cfg["seed"], model_builder(cfg, vocab, length))
        host = dict(np.load(batch_path))
        sharding = batch_sharding(mesh, rules)
        self.batch = {k: jax.device_put(v, sharding) for k, v in host.items()}
        self.step = jit_train_step(_step_spec(cfg, layout, mesh), layout.sharding, sharding,
                                   replicated(mesh))
        start = time.perf_counter()
        compiled = self.step.lower(self.state, self.batch).compile()
        self.compile_s = time.perf_counter() - start
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        self.xla_flops = float(cost.get("flops", 0.0))
        self.flops = dot_flops(jax.make_jaxpr(self.step)(self.state, self.batch).jaxpr)
        self.params = sum(x.size for x in jax.tree.leaves(self.state["params"]))
        model = cfg["model"]
        self.dtype = model["dtype"]
        self.arch = {
            "kind": {"two_tower": "clip"}.get(model["name"], model["name"]),
            "embed_dim": model["embed_dim"], "quick_gelu": model["activation"] == "quick_gelu",
            "image": {k: image[k] for k in ("image_size", "channels", "patch_size", "width",
                                            "depth", "heads", "mlp_dim", "pool", "ln_pre",
                                            "mask_ratio")},
            "dtype": model["dtype"],
            "text": {**model["text"], "vocab_size": vocab, "context_length": length},
            "coca": model.get("coca"), "max_logit_scale": model["max_logit_scale"],
            "optimizer": cfg["optimizer"],
            "image_mean": _per_channel(cfg["data"]["image_mean"], image["channels"]),
            "image_std": _per_channel(cfg["data"]["image_std"], image["channels"]),
        }
        self.run(2)  # warm-up

    def run(self, steps: int) -> tuple[list[float], list[float]]:
        """Wall and process CPU seconds of each of `steps` steps."""
        import jax

        times, cpu = [], []
        for _ in range(steps):
            start, start_cpu = time.perf_counter(), time.process_time()
            self.state, metrics = self.step(self.state, self.batch)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        return times, cpu


def _per_channel(value, channels: int) -> list[float]:
    return [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)] * channels


def worker(threads: int) -> None:
    """The vlmjax worker: the same line protocol as bench/open_clip_step.py."""
    pin(threads)
    import jax

    row = None
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "exit":
            return
        if cmd["cmd"] == "build":
            row = None
            row = VlmjaxRow(cmd["spec"], cmd["overrides"], cmd["batch_size"], cmd["batch"])
            answer = {"compile_s": row.compile_s, "flops": row.flops, "xla_flops": row.xla_flops,
                      "params": int(row.params), "arch": row.arch, "jax": jax.__version__,
                      "xla_threads": xla_threads()}
        elif cmd["cmd"] == "time":
            times, cpu = row.run(cmd["steps"])
            answer = {"times": times, "cpu": cpu, "peak": matmul_peak(row.dtype)}
        else:
            raise ValueError(f"unknown command {cmd['cmd']!r}")
        print(json.dumps(answer), flush=True)


# ---------------------------------------------------------------- the driver

class Worker:
    """A worker subprocess spoken to in JSON lines."""

    def __init__(self, argv: list[str], env: dict):
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=env, cwd=REPO)

    def ask(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.proc.args[:2]} died (exit {self.proc.wait()})")
        return json.loads(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write(json.dumps({"cmd": "exit"}) + "\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def write_batch(path: str, batch: int, image_size: int, channels: int, vocab: int,
                length: int) -> None:
    """A fixed synthetic batch: random pixels, captions of random length padded with 0."""
    import numpy as np

    rng = np.random.default_rng(0)
    lengths = rng.integers(length // 3, length + 1, batch)
    mask = np.arange(length)[None, :] < lengths[:, None]
    text = np.where(mask, rng.integers(1, vocab, (batch, length)), 0).astype(np.int32)
    np.savez(path, image=rng.integers(0, 256, (batch, image_size, image_size, channels),
                                      dtype=np.uint8), text=text, text_mask=mask,
             label=np.zeros(batch, np.int32))


def measure_row(name: str, vlm: Worker, ref: Worker, args, overrides: list[str],
                batch_path: str) -> dict:
    spec, row_overrides, batch, differences = ROWS[name]
    compile_row = args.compile_rows == "all" or name in args.compile_rows.split(",")
    built = vlm.ask(cmd="build", spec=spec,
                    overrides=[*row_overrides, f"model.dtype={args.dtype}", *overrides],
                    batch_size=batch, batch=batch_path)
    ref_built = ref.ask(cmd="build", arch=built["arch"], batch=batch_path, threads=args.threads,
                        compile=compile_row)
    times = {"vlmjax": [], "eager": [], "compiled": []}
    peaks, loads = [], []
    for _ in range(args.rounds):
        loads.append(os.getloadavg()[0])
        answer = vlm.ask(cmd="time", steps=args.steps)
        times["vlmjax"] += answer["times"]
        peaks.append(answer["peak"])
        times["eager"] += ref.ask(cmd="time", mode="eager", steps=args.steps)["times"]
        if compile_row:
            times["compiled"] += ref.ask(cmd="time", mode="compiled", steps=args.steps)["times"]
    med = {k: statistics.median(v) for k, v in times.items() if v}
    xla_peak = statistics.median(peaks)
    peak = max(xla_peak, ref_built["peak"])
    result = {
        "batch": batch, "vlmjax_s": med["vlmjax"], "open_clip_s": med["eager"],
        "ratio": med["vlmjax"] / med["eager"], "flops": built["flops"],
        "xla_flops": built["xla_flops"], "peak_flops": peak, "xla_matmul_flops": xla_peak,
        "torch_matmul_flops": ref_built["peak"], "dtype": args.dtype,
        "xla_threads": built["xla_threads"], "torch_threads": ref_built["threads"],
        "torch_interop_threads": ref_built["interop_threads"],
        "mfu": built["flops"] / med["vlmjax"] / peak,
        "open_clip_mfu": built["flops"] / med["eager"] / peak,
        "vlmjax_compile_s": built["compile_s"], "params": built["params"],
        "open_clip_params": ref_built["params"], "load1": loads, "differences": differences,
        "versions": {"jax": built["jax"], "torch": ref_built["torch"],
                     "open_clip": ref_built["open_clip"]},
    }
    if compile_row:
        result.update(open_clip_compiled_s=med["compiled"],
                      ratio_compiled=med["vlmjax"] / med["compiled"],
                      open_clip_compile_s=ref_built["compile_s"])
    return result


def print_table(results: dict, args) -> None:
    print(f"train step, median of {args.rounds} x {args.steps} steps after warm-up, "
          f"{args.threads} threads each (same cores), one CPU device, {args.dtype}")
    head = (f"{'row':<14}{'batch':>6}{'vlmjax s':>10}{'open_clip s':>12}{'ratio':>7}"
            f"{'torch.compile s':>16}{'ratio':>7}{'img/s vlmjax':>13}{'img/s oc':>9}"
            f"{'GFLOP/step':>11}{'MFU':>6}{'MFU oc':>7}")
    print(head)
    for name, r in results.items():
        compiled = (f"{r['open_clip_compiled_s']:>16.3f}{r['ratio_compiled']:>7.2f}"
                    if "open_clip_compiled_s" in r else f"{'-':>16}{'-':>7}")
        print(f"{name:<14}{r['batch']:>6}{r['vlmjax_s']:>10.3f}{r['open_clip_s']:>12.3f}"
              f"{r['ratio']:>7.2f}{compiled}{r['batch'] / r['vlmjax_s']:>13.0f}"
              f"{r['batch'] / r['open_clip_s']:>9.0f}{r['flops'] / 1e9:>11.1f}"
              f"{r['mfu']:>6.1%}{r['open_clip_mfu']:>7.1%}")
    print(f"measured {args.dtype} matmul rate (GFLOP/s; XLA median of rounds / torch): " + ", ".join(
        f"{name} {r['xla_matmul_flops'] / 1e9:.0f}/{r['torch_matmul_flops'] / 1e9:.0f}"
        for name, r in results.items()) + "; MFU uses the higher")
    first = next(iter(results.values()))
    print(f"threads: XLA pool {first['xla_threads']}, torch intra-op {first['torch_threads']}, "
          f"inter-op {first['torch_interop_threads']}")
    print("1-min load average during the rounds: " + ", ".join(
        f"{name} {'/'.join(f'{x:.1f}' for x in r['load1'])}" for name, r in results.items()))
    for name, r in results.items():
        print(f"{name}: {r['params'] / 1e6:.2f}M params (open_clip {r['open_clip_params'] / 1e6:.2f}M)"
              f"; {r['differences']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=DEFAULT_ROWS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per round and side")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile-rows", default="demo_clip",
                        help="rows also timed under torch.compile (all, none or a list; its "
                             "compile takes minutes on 2 cores)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--out", default="", help="append the JSON line to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    overrides = [a.removeprefix("--config.") for a in rest if a.startswith("--config.")]
    if args.worker:
        worker(args.threads)
        return
    if not os.path.exists(OPEN_CLIP_PYTHON):
        sys.exit(f"{OPEN_CLIP_PYTHON} is missing: bash launch/setup_open_clip.sh")
    names = args.rows.split(",")
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        sys.exit(f"unknown row {unknown[0]!r}; rows are {', '.join(ROWS)}")
    cpus = pin(args.threads)
    host = host_summary(args.threads)
    print(host, flush=True)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "OMP_NUM_THREADS": str(args.threads)}
    vlm = Worker([sys.executable, os.path.abspath(__file__), "--worker",
                  f"--threads={args.threads}"], env)
    ref = Worker([OPEN_CLIP_PYTHON, os.path.join(REPO, "bench", "open_clip_step.py")], env)
    results = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name in names:
                batch_path = os.path.join(tmp, f"{name}.npz")
                _write_row_batch(name, overrides, batch_path)
                results[name] = r = measure_row(name, vlm, ref, args, overrides, batch_path)
                compiled = (f", torch.compile {r['open_clip_compiled_s']:.3f} s"
                            if "open_clip_compiled_s" in r else "")
                print(f"  {name}: vlmjax {r['vlmjax_s']:.3f} s, open_clip {r['open_clip_s']:.3f} s"
                      f"{compiled}, load {'/'.join(f'{x:.1f}' for x in r['load1'])}", flush=True)
    finally:
        vlm.close()
        ref.close()
    print_table(results, args)
    print(f"load average at the end: {'/'.join(f'{x:.2f}' for x in os.getloadavg())}")
    line = json.dumps({"host": {**cpu_info(), "summary": host, "load_end": os.getloadavg()},
                       "cpus": cpus, "threads": args.threads, "dtype": args.dtype,
                       "time": time.strftime("%Y-%m-%d %H:%M:%S"), "rows": {
        name: {k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()}
        for name, r in results.items()}})
    print(line)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")


def _write_row_batch(name: str, overrides: list[str], path: str) -> None:
    """The row's batch from its config's image and tokenizer sizes (no jax in this process)."""
    sys.path.insert(0, REPO)
    from vlmjax.config import config_from_args

    spec, row_overrides, batch, _ = ROWS[name]
    cfg = config_from_args(spec, [*row_overrides, *overrides]).to_dict()
    image, tok = cfg["model"]["image"], cfg["tokenizer"]
    write_batch(path, batch, image["image_size"], image["channels"], tok["vocab_size"],
                tok["context_length"])


if __name__ == "__main__":
    main()
