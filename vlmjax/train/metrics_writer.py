"""Writes scalar metrics as JSON lines and TensorBoard events, and plots curves as PNG."""

import json
import logging
import os
from collections.abc import Mapping

import numpy as np

log = logging.getLogger(__name__)


def _step_of(line: str) -> int | None:
    """The step of a metrics line; None for a blank or torn one (a kill mid-write)."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def _same_evaluation(line: str, row: Mapping) -> bool:
    """True for a line of the same step whose metrics are all among `row`'s."""
    try:
        old = json.loads(line)
    except ValueError:
        return False
    return old.get("step") == row["step"] and set(old) <= set(row)


class MetricsWriter:
    """Appends `{"step": s, **metrics}` to workdir/metrics.jsonl and TensorBoard events."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.enabled = enabled
        self._tb = None
        if enabled:
            from tensorboard.summary import Writer
            self._tb = Writer(os.path.join(workdir, "tensorboard"))

    def truncate_after(self, step: int) -> None:
        """Drops lines logged after `step`: after a resume those steps are trained again."""
        if not self.enabled or not os.path.exists(self.path):
            return
        with open(self.path) as f:
            rows = [line for line in f if _step_of(line) is not None and _step_of(line) <= step]
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(rows)
        os.replace(tmp, self.path)

    def write(self, step: int, metrics: Mapping[str, float], replace: bool = False) -> None:
        """Appends a row; with `replace`, rows of the same step holding only these keys (an
        earlier evaluation of the same checkpoint) are dropped first, so a re-evaluation does
        not duplicate them."""
        if not self.enabled:
            return
        row = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        if replace and os.path.exists(self.path):
            with open(self.path) as f:
                lines = f.readlines()
            kept = [line for line in lines if not _same_evaluation(line, row)]
            if len(kept) != len(lines):
                tmp = self.path + ".tmp"
                with open(tmp, "w") as f:
                    f.writelines(kept)
                os.replace(tmp, self.path)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        for key, value in metrics.items():
            self._tb.add_scalar(key, float(value), int(step))
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str) -> list[dict]:
    """All rows of a metrics.jsonl file."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_curves(metrics_path: str, out_path: str, keys: tuple[str, ...]) -> bool:
    """One panel per metric key over steps, saved as PNG; False when nothing to plot."""
    rows = read_metrics(metrics_path) if os.path.exists(metrics_path) else []
    series = {k: [(r["step"], r[k]) for r in rows if k in r] for k in keys}
    series = {k: np.asarray(v) for k, v in series.items() if v}
    if not series:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(series), figsize=(4.2 * len(series), 3.2), squeeze=False)
    for ax, (key, values) in zip(axes[0], series.items(), strict=True):
        ax.plot(values[:, 0], values[:, 1], marker="o" if len(values) < 20 else None)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return True
