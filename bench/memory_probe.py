"""Shared by the memory benchmarks: peak-RSS probes and running one case per child process.

Each case runs in its own process so its peak is its own; the child prints one JSON line.
"""

import json
import os
import subprocess
import sys

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
