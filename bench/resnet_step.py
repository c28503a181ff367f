"""Train step of a ResNet CLIP: vlmjax against open_clip's ModifiedResNet, same shapes and cores.

    .venv/bin/python bench/resnet_step.py [--rows rn50_w16_64px,rn50_224,demo_resnet]
        [--rounds 3] [--steps 4] [--threads 2] [--convs im2col,xla]

Two worker processes pinned to the same `--threads` cores: this script with `--worker`
(vlmjax's jitted train step on one CPU device, one compiled step per convolution
implementation in `--convs`) and this script with `--torch-worker` under
`.venv-openclip/bin/python` (open_clip.CLIP with its ModifiedResNet image tower, ClipLoss,
AdamW with gradient clipping, eager PyTorch, `torch.set_num_threads(threads)`). Both train in
training mode (BatchNorm batch statistics) on the same synthetic batch. Rows build and warm up
(compile excluded), then time `--steps` steps in `--rounds` interleaved rounds so both sides
see the same load from other processes; each figure is the median over the timed steps.
`demo_resnet` is the shipped demo (28 px grayscale, a 2-stride stem, 3 stages), which
open_clip's fixed ModifiedResNet (RGB, stride 32) cannot build: vlmjax only.
Prints a table, then as the last line one JSON object of the figures.
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
DEMO = os.path.join(REPO, "configs", "demo", "clip_resnet_fashion_mnist.py")
SMALL_TEXT = ["model.text.width=64", "model.text.depth=2", "model.text.heads=2",
              "model.text.mlp_dim=256", "tokenizer.context_length=16", "tokenizer.vocab_size=1024"]


def _resnet(image_size: int, embed: int, layers: str = "(3,4,6,3)", width: int = 64,
            head_width: int = 64) -> list[str]:
    return [f"model.image.layers={layers}", f"model.image.width={width}",
            f"model.image.head_width={head_width}", f"model.image.output_dim={embed}",
            "model.image.stem_stride=4", "model.image.strides=()",
            f"model.image.image_size={image_size}", "model.image.channels=3",
            f"model.embed_dim={embed}", *SMALL_TEXT]


# name -> (overrides of the demo config, batch, open_clip can build it)
ROWS = {
    "rn50_w16_64px": (_resnet(64, 128, width=16, head_width=32), 128, True),
    "rn50_224": (_resnet(224, 1024), 8, True),
    "demo_resnet": ([], 256, False),
}


def pin(threads: int) -> list[int]:
    """Restricts this process to the first `threads` of its CPUs (before jax/torch start)."""
    cpus = sorted(os.sched_getaffinity(0))[:threads]
    os.sched_setaffinity(0, cpus)
    return cpus


def timed(step, steps: int) -> list[float]:
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


# ---------------------------------------------------------------- vlmjax worker

class VlmjaxRow:
    """vlmjax's jitted train step for one config on a fixed batch."""

    def __init__(self, overrides: list[str], batch_path: str, conv: str):
        import jax
        import numpy as np

        from vlmjax.config import config_from_args
        from vlmjax.parallel.mesh import batch_sharding, make_mesh, replicated
        from vlmjax.train.loop import _step_spec
        from vlmjax.train.state import model_builder, state_layout
        from vlmjax.train.step import jit_train_step

        cfg = config_from_args(DEMO, [*overrides, f"model.image.conv={conv}", "mesh.data=1"]).to_dict()
        mesh, rules = make_mesh(cfg["mesh"], jax.devices()[:1]), cfg["sharding_rules"]
        vocab, length = cfg["tokenizer"]["vocab_size"], cfg["tokenizer"]["context_length"]
        layout = state_layout(cfg, vocab, length, mesh)
        self.state = layout.init(cfg["seed"], model_builder(cfg, vocab, length))
        sharding = batch_sharding(mesh, rules)
        self.batch = {k: jax.device_put(v, sharding) for k, v in dict(np.load(batch_path)).items()}
        self.fn = jit_train_step(_step_spec(cfg, layout, mesh), layout.sharding, sharding,
                                 replicated(mesh))
        start = time.perf_counter()
        self.fn.lower(self.state, self.batch).compile()
        self.compile_s = time.perf_counter() - start
        self.params = int(sum(x.size for x in jax.tree.leaves(self.state["params"])))
        self.stats = int(sum(x.size for x in jax.tree.leaves(self.state.get("model_state", {}))))
        model = cfg["model"]
        self.arch = {"embed_dim": model["embed_dim"], "image": model["image"],
                     "text": {**model["text"], "vocab_size": vocab, "context_length": length},
                     "quick_gelu": model["activation"] == "quick_gelu",
                     "optimizer": cfg["optimizer"], "max_logit_scale": model["max_logit_scale"]}
        timed(self.step, 2)

    def step(self) -> None:
        import jax
        self.state, metrics = self.fn(self.state, self.batch)
        jax.block_until_ready(metrics)


def worker(threads: int) -> None:
    pin(threads)
    import jax
    rows: dict = {}
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "exit":
            return
        if cmd["cmd"] == "build":
            rows = {conv: VlmjaxRow(cmd["overrides"], cmd["batch"], conv) for conv in cmd["convs"]}
            first = next(iter(rows.values()))
            answer = {"compile_s": {c: r.compile_s for c, r in rows.items()}, "params": first.params,
                      "stats": first.stats, "arch": first.arch, "jax": jax.__version__}
        else:
            answer = {"times": timed(rows[cmd["conv"]].step, cmd["steps"])}
        print(json.dumps(answer), flush=True)


# ---------------------------------------------------------------- open_clip worker

def torch_worker(threads: int) -> None:
    """open_clip's side (run under .venv-openclip): build / time commands as the vlmjax worker."""
    import math

    import numpy as np
    import open_clip
    import torch
    from open_clip.loss import ClipLoss

    torch.set_num_threads(threads)
    state: dict = {}

    def build(arch: dict, batch_path: str) -> dict:
        image, text = arch["image"], arch["text"]
        torch.manual_seed(0)
        model = open_clip.CLIP(
            arch["embed_dim"],
            {"layers": list(image["layers"]), "width": image["width"],
             "head_width": image["head_width"], "image_size": image["image_size"]},
            {"context_length": text["context_length"], "vocab_size": text["vocab_size"],
             "width": text["width"], "heads": text["heads"], "layers": text["depth"],
             "mlp_ratio": text["mlp_dim"] / text["width"]},
            quick_gelu=arch["quick_gelu"]).train()
        opt = arch["optimizer"]
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
        rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
        optimizer = torch.optim.AdamW([{"params": rest, "weight_decay": 0.0},
                                       {"params": decay, "weight_decay": opt["weight_decay"]}],
                                      lr=opt["lr"], betas=(opt["b1"], opt["b2"]), eps=opt["eps"])
        data = np.load(batch_path)
        images = torch.from_numpy(data["image"]).permute(0, 3, 1, 2).float().div(255.0)
        images = ((images - 0.45) / 0.27).contiguous()
        texts = torch.from_numpy(data["text"]).long()
        loss_fn, bound = ClipLoss(), math.log(arch["max_logit_scale"])

        def step() -> None:
            loss = loss_fn(*model(images, texts))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), opt["grad_clip_norm"])
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, bound)
            loss.item()

        timed(step, 2)
        state["step"] = step
        stats = sum(b.numel() for n, b in model.named_buffers()
                    if n.endswith(("running_mean", "running_var")))
        return {"params": sum(p.numel() for p in model.parameters()), "stats": stats,
                "torch": torch.__version__, "open_clip": open_clip.__version__}

    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "exit":
            return
        answer = (build(cmd["arch"], cmd["batch"]) if cmd["cmd"] == "build"
                  else {"times": timed(state["step"], cmd["steps"])})
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


def write_batch(path: str, overrides: list[str], batch: int) -> None:
    """Random pixels and captions of random length (padded with 0) for the row's config."""
    import numpy as np

    sys.path.insert(0, REPO)
    from vlmjax.config import config_from_args
    cfg = config_from_args(DEMO, overrides).to_dict()
    image, tok = cfg["model"]["image"], cfg["tokenizer"]
    rng = np.random.default_rng(0)
    length = tok["context_length"]
    mask = np.arange(length)[None, :] < rng.integers(length // 3, length + 1, batch)[:, None]
    np.savez(path, image=rng.integers(0, 256, (batch, image["image_size"], image["image_size"],
                                               image["channels"]), dtype=np.uint8),
             text=np.where(mask, rng.integers(1, tok["vocab_size"], (batch, length)), 0
                           ).astype(np.int32), text_mask=mask, label=np.zeros(batch, np.int32))


def measure(name: str, vlm: Worker, ref: Worker | None, args, path: str) -> dict:
    overrides, batch, _ = ROWS[name]
    overrides = [*overrides, f"train.batch_size={batch}"]
    convs = args.convs.split(",")
    built = vlm.ask(cmd="build", overrides=overrides, batch=path, convs=convs)
    ref_built = ref.ask(cmd="build", arch=built["arch"], batch=path) if ref else None
    times: dict[str, list[float]] = {c: [] for c in convs} | ({"open_clip": []} if ref else {})
    loads = []
    for _ in range(args.rounds):
        loads.append(os.getloadavg()[0])
        for conv in convs:
            times[conv] += vlm.ask(cmd="time", conv=conv, steps=args.steps)["times"]
        if ref:
            times["open_clip"] += ref.ask(cmd="time", steps=args.steps)["times"]
    med = {k: statistics.median(v) for k, v in times.items()}
    best = min(convs, key=lambda c: med[c])
    out = {"batch": batch, "vlmjax_s": {c: med[c] for c in convs}, "best_conv": best,
           "compile_s": built["compile_s"], "params": built["params"], "stats": built["stats"],
           "load1": loads, "jax": built["jax"]}
    if ref_built:
        out.update(open_clip_s=med["open_clip"], ratio=med[best] / med["open_clip"],
                   open_clip_params=ref_built["params"], open_clip_stats=ref_built["stats"],
                   torch=ref_built["torch"], open_clip=ref_built["open_clip"])
    return out


def print_table(results: dict, args) -> None:
    convs = args.convs.split(",")
    print(f"train step (training-mode BatchNorm), median of {args.rounds} x {args.steps} steps "
          f"after warm-up, {args.threads} threads each (same cores), one CPU device, float32")
    print(f"{'row':<15}{'batch':>6}" + "".join(f"{'vlmjax ' + c + ' s':>17}" for c in convs)
          + f"{'open_clip s':>12}{'ratio':>7}{'img/s':>7}{'params':>10}{'oc params':>10}")
    for name, r in results.items():
        oc = (f"{r['open_clip_s']:>12.3f}{r['ratio']:>7.2f}" if "open_clip_s" in r
              else f"{'-':>12}{'-':>7}")
        print(f"{name:<15}{r['batch']:>6}" + "".join(f"{r['vlmjax_s'][c]:>17.3f}" for c in convs)
              + oc + f"{r['batch'] / r['vlmjax_s'][r['best_conv']]:>7.0f}"
              + f"{r['params']:>10}{r.get('open_clip_params', '-'):>10}")
    print("ratio = best vlmjax convolution / open_clip eager; 1-min load average per round: "
          + ", ".join(f"{n} {'/'.join(f'{x:.1f}' for x in r['load1'])}" for n, r in results.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--convs", default="im2col,xla")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.threads)
    if args.torch_worker:
        pin(args.threads)
        return torch_worker(args.threads)
    names = args.rows.split(",")
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        sys.exit(f"unknown row {unknown[0]!r}; rows are {', '.join(ROWS)}")
    if any(ROWS[n][2] for n in names) and not os.path.exists(OPEN_CLIP_PYTHON):
        sys.exit(f"{OPEN_CLIP_PYTHON} is missing: bash launch/setup_open_clip.sh")
    cpus = pin(args.threads)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "OMP_NUM_THREADS": str(args.threads)}
    me = os.path.abspath(__file__)
    vlm = Worker([sys.executable, me, "--worker", f"--threads={args.threads}"], env)
    ref = None
    if any(ROWS[n][2] for n in names):
        ref = Worker([OPEN_CLIP_PYTHON, me, "--torch-worker", f"--threads={args.threads}"], env)
    results = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name in names:
                path = os.path.join(tmp, f"{name}.npz")
                write_batch(path, ROWS[name][0], ROWS[name][1])
                results[name] = measure(name, vlm, ref if ROWS[name][2] else None, args, path)
    finally:
        vlm.close()
        if ref:
            ref.close()
    print_table(results, args)
    print(json.dumps({"cpus": cpus, "threads": args.threads, "rows": results}))


if __name__ == "__main__":
    main()
