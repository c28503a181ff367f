"""Shared by the memory benchmarks: peak-RSS probes and running one case per child process.

Each case runs in its own process so its peak is its own; the child prints one JSON line.
"""

import json
import os
import statistics
import subprocess
import sys
import time

GIB = 2**30
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def status_gib(field: str) -> float:
    """A /proc/self/status figure: VmRSS (now) or VmHWM (peak since start or the last reset)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024 / GIB  # kB
    raise KeyError(field)


def reset_peak() -> None:
    """Restarts the peak-RSS count (VmHWM, ru_maxrss) at the current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def run_child(script: str, args: list[str]) -> dict:
    """Runs `script --child ARGS` on CPU and returns the JSON object it printed last."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, script, "--child", *args], env=env, capture_output=True,
                         text=True, check=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def profile_compiled(compiled, args: tuple, runs: int, max_gib: float) -> dict:
    """XLA's memory estimate of a compiled function, then (if it fits under `max_gib`) the peak
    RSS growth while running it `runs` times (after a warm-up when runs > 1), the process's
    peak RSS and the median time; "result" is the last call's output (host)."""
    import jax

    analysis = compiled.memory_analysis()
    xla_gib = (analysis.temp_size_in_bytes + analysis.argument_size_in_bytes
               + analysis.output_size_in_bytes) / GIB
    if xla_gib > max_gib:
        return {"fits": False, "xla_gib": xla_gib}
    process_peak = status_gib("VmHWM")
    reset_peak()
    before = status_gib("VmRSS")
    if runs > 1:
        jax.block_until_ready(compiled(*args))  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        result = jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    return {"fits": True, "peak_gib": status_gib("VmHWM") - before,
            "rss_gib": max(process_peak, status_gib("VmHWM")), "xla_gib": xla_gib,
            "seconds": statistics.median(times), "runs": runs, "result": jax.device_get(result)}
