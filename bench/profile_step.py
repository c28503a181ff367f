"""Where the train step's time goes on this CPU: XLA's per-op times grouped by what the op does.

    source launch/env.sh && .venv/bin/python bench/profile_step.py [--rows demo_clip,...]
        [--steps 5] [--threads 2] [--top 15] [--config.key=value ...]

For each row of bench/train_step.py: builds vlmjax's jitted step (the same program the bench
and the trainer run), records `--steps` steps with `jax.profiler` and XLA:CPU's per-thunk
trace events (`--xla_cpu_enable_xprof_traceme`, added to XLA_FLAGS only for this process), and
attributes each op's time to one share through the Python source stack XLA keeps for every
HLO instruction:

- matmul (dense): dots of the dense layers, projections, patch embedding and their gradients;
- matmul (tiny, batched): dots whose per-matrix M*N*K is below 64^3 (attention per head);
- attention (non-matmul): softmax, masking and scaling (ops in `layers.attention`'s
  "attention_core" name scope);
- layout copies: copy / transpose instructions and fusions that only move data;
- layernorm, loss (objectives/), optimizer (optax and the update in train_step), other
  elementwise (activations, residual adds, bias gradients, normalisation of the input);
- host overhead: the step's wall time outside the XLA program's first op to last op (the
  Python call, argument handling and dispatch, waiting for the result).

Op times are per-thread durations summed over XLA's threads, so the shares are of the summed
op time ("thread time"); the program span and the host overhead are wall times. A YNNPACK
fusion (most matmuls) is one event on the thread that called it, however many threads it ran
on, so its share counts its wall time once and the matmul shares are lower bounds. Prints one
table per row, the top ops, then one JSON line.
"""

import argparse
import collections
import dataclasses
import glob
import json
import os
import re
import statistics
import sys
import tempfile

BENCH = os.path.dirname(os.path.abspath(__file__))
TINY_MNK = 64 ** 3

# Control-flow instructions: their trace event wraps the events of the ops they run.
CONTAINERS = ("conditional", "while", "call")

SHARES = ("matmul (dense)", "matmul (tiny, batched)", "attention (non-matmul)", "layout copies",
          "layernorm", "loss", "optimizer", "other elementwise")


@dataclasses.dataclass
class Instruction:
    name: str
    opcode: str
    calls: str
    frame: int
    text: str

    @property
    def op_name(self) -> str:
        m = re.search(r'op_name="([^"]*)"', self.text)
        return m.group(1) if m else ""


def parse_hlo(text: str) -> tuple[dict[str, Instruction], dict[str, list[Instruction]],
                                  dict[int, list[tuple[str, str, int]]]]:
    """(instructions by name, instructions of each computation, Python stack of each frame id)."""
    sections: dict[str, dict[int, str]] = {}
    current = None
    computations: dict[str, list[Instruction]] = {}
    by_name: dict[str, Instruction] = {}
    comp = None
    for line in text.splitlines():
        if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            current = sections.setdefault(line, {})
            continue
        if current is not None:
            m = re.match(r"^(\d+) (.*)$", line)
            if m:
                current[int(m.group(1))] = m.group(2)
                continue
            current = None
        head = re.match(r"^(?:ENTRY )?%?(\S+) .*\{$", line)
        if head and not line.startswith(" "):
            comp = head.group(1)
            computations[comp] = []
            continue
        m = re.match(r"^\s+(?:ROOT )?%(\S+) = (.*)$", line)
        if m and comp is not None:
            rest = m.group(2)
            if rest.startswith("("):  # tuple shape: skip to its closing parenthesis
                depth = 0
                for i, ch in enumerate(rest):
                    depth += ch == "("
                    depth -= ch == ")"
                    if depth == 0:
                        rest = rest[i + 1:].lstrip()
                        break
            else:
                rest = rest.split(" ", 1)[1]
            opcode = re.match(r"([\w-]+)\(", rest).group(1)
            calls = re.search(r"(?:calls|body)=%?([\w.-]+)", rest)
            frame = re.search(r"stack_frame_id=(\d+)", rest)
            ins = Instruction(m.group(1), opcode, calls.group(1) if calls else "",
                              int(frame.group(1)) if frame else 0, line)
            computations[comp].append(ins)
            by_name[ins.name] = ins
    names = {k: v.strip('"') for k, v in sections.get("FileNames", {}).items()}
    funcs = {k: v.strip('"') for k, v in sections.get("FunctionNames", {}).items()}
    locs = {}
    for k, v in sections.get("FileLocations", {}).items():
        f = dict(re.findall(r"(\w+)=(\d+)", v))
        locs[k] = (names.get(int(f["file_name_id"]), "?"),
                   funcs.get(int(f["function_name_id"]), "?"), int(f["line"]))
    frames = {k: dict(re.findall(r"(\w+)=(\d+)", v)) for k, v in sections.get("StackFrames", {}).items()}

    def stack(frame_id: int) -> list[tuple[str, str, int]]:
        out, seen = [], set()
        while frame_id and frame_id in frames and frame_id not in seen:
            seen.add(frame_id)
            out.append(locs.get(int(frames[frame_id]["file_location_id"]), ("?", "?", 0)))
            parent = int(frames[frame_id]["parent_frame_id"])
            frame_id = parent if parent != frame_id else 0
        return out

    stacks = {k: stack(k) for k in frames}
    return by_name, computations, stacks


def _dims(shape: str) -> list[int]:
    m = re.search(r"\[([\d,]*)\]", shape)
    return [int(x) for x in m.group(1).split(",") if x] if m else []


def dot_mnk(ins: Instruction) -> int:
    """M*N*K of one matrix of a dot (batch dimensions excluded), from its HLO text."""
    out = _dims(ins.text.split("=", 1)[1])
    operands = re.findall(r"\b[fbsu]\d+\[[\d,]*\]", ins.text.split(" dot(", 1)[1])
    lhs = _dims(operands[0]) if operands else []
    contract = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", ins.text)
    batch = re.search(r"lhs_batch_dims=\{([\d,]*)\}", ins.text)
    k = 1
    for d in (contract.group(1).split(",") if contract and contract.group(1) else []):
        k *= lhs[int(d)] if lhs else 1
    nb = len(batch.group(1).split(",")) if batch and batch.group(1) else 0
    mn = 1
    for d in out[nb:]:
        mn *= d
    return mn * k


def classify(ins: Instruction, computations: dict, by_name: dict, stacks: dict) -> str:
    """The share an executed instruction's time belongs to (module doc)."""
    body = computations.get(ins.calls, [])
    ops = {i.opcode for i in body} | {ins.opcode}
    stack = stacks.get(ins.frame, [])
    funcs = {f for _, f, _ in stack}
    files = " ".join(f for f, _, _ in stack)
    dots = [i for i in [ins, *body] if i.opcode == "dot"]
    if dots or "convolution" in ops:
        # operand shapes are only spelled out inside fused computations; fall back to "dense"
        mnk = min((dot_mnk(d) for d in dots), default=TINY_MNK)
        return "matmul (tiny, batched)" if mnk < TINY_MNK else "matmul (dense)"
    if ops <= {"copy", "transpose", "bitcast", "parameter", "reshape", "fusion", "tuple",
               "get-tuple-element"} and ops & {"copy", "transpose"}:
        return "layout copies"
    if "optax" in files or "train_step" in funcs and "loss_and_grads" not in funcs:
        return "optimizer"
    if any("attention_core" in i.op_name for i in [ins, *body]):  # layers.attention's scope
        return "attention (non-matmul)"
    if "/objectives/" in files:
        return "loss"
    if any(f.startswith("LayerNorm") for f in funcs):
        return "layernorm"
    return "other elementwise"


def profile_row(name: str, steps: int, overrides: list[str], tmp: str) -> dict:
    import jax
    import train_step as bench

    spec, row_overrides, batch_size, _ = bench.ROWS[name]
    path = os.path.join(tmp, f"{name}.npz")
    bench._write_row_batch(name, overrides, path)
    row = bench.VlmjaxRow(spec, [*row_overrides, *overrides], batch_size, path)
    hlo = row.step.lower(row.state, row.batch).compile().as_text()
    by_name, computations, stacks = parse_hlo(hlo)
    row.run(3)
    wall, _ = row.run(steps)
    trace_dir = os.path.join(tmp, f"trace_{name}")
    jax.profiler.start_trace(trace_dir)
    traced, _ = row.run(steps)
    jax.profiler.stop_trace()
    data = jax.profiler.ProfileData.from_file(
        sorted(glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True))[-1])
    per_op = collections.Counter()
    spans: dict = {}  # run id -> (first op start, last op end): one execution of the step
    for plane in data.planes:
        for line in plane.lines:
            for ev in line.events:
                stats = dict(ev.stats)
                ins = by_name.get(stats.get("hlo_op"))
                if ins is not None and ins.opcode in CONTAINERS:
                    continue  # its event spans the ops it runs, which have their own events
                if "hlo_op" in stats:
                    per_op[stats["hlo_op"]] += ev.duration_ns
                    first, last = spans.get(stats.get("run_id"), (float("inf"), 0.0))
                    spans[stats.get("run_id")] = (min(first, ev.start_ns),
                                                  max(last, ev.start_ns + ev.duration_ns))
    shares = collections.Counter()
    for op, ns in per_op.items():
        ins = by_name.get(op)
        shares[classify(ins, computations, by_name, stacks) if ins else "other elementwise"] += ns
    total = sum(per_op.values())
    step_s = statistics.median(wall)
    traced_s = statistics.median(traced)
    span_s = statistics.median(end - start for start, end in spans.values()) / 1e9
    return {
        "step_s": step_s, "traced_step_s": traced_s, "op_thread_s": total / 1e9 / steps,
        "program_span_s": span_s, "host_overhead_s": max(0.0, traced_s - span_s),
        "shares": {k: shares[k] / total for k in SHARES},
        "top": [(op, ns / 1e9 / steps, classify(by_name[op], computations, by_name, stacks)
                 if op in by_name else "?") for op, ns in per_op.most_common(40)],
        "flops": row.flops,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="demo_clip")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top", type=int, default=15)
    args, rest = parser.parse_known_args()
    overrides = [a.removeprefix("--config.") for a in rest if a.startswith("--config.")]
    sys.path.insert(0, BENCH)
    import train_step as bench

    cpus = bench.pin(args.threads)
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["XLA_FLAGS"] = " ".join(
        [os.environ.get("XLA_FLAGS", ""), "--xla_cpu_enable_xprof_traceme=true"]).strip()
    print(bench.host_summary(args.threads))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.rows.split(","):
            r = results[name] = profile_row(name, args.steps, overrides, tmp)
            print(f"\n{name}: step {r['step_s'] * 1e3:.1f} ms untraced, {r['traced_step_s'] * 1e3:.1f}"
                  f" ms traced; XLA program span {r['program_span_s'] * 1e3:.1f} ms, host overhead "
                  f"{r['host_overhead_s'] * 1e3:.1f} ms; op thread time "
                  f"{r['op_thread_s'] * 1e3:.1f} ms ({r['op_thread_s'] / r['program_span_s']:.2f}"
                  f" threads busy on average)")
            for k, v in r["shares"].items():
                print(f"  {k:<24}{v:>7.1%}{v * r['op_thread_s'] * 1e3:>9.1f} ms")
            print(f"  top {args.top} ops (ms/step, share):")
            for op, s, kind in r["top"][:args.top]:
                print(f"    {op:<36}{s * 1e3:>8.2f}  {kind}")
    print(json.dumps({"cpus": cpus, "rows": results}))


if __name__ == "__main__":
    main()
