"""Results files and tables: workdir/results.json and a printed evaluator x metric table."""

import json
import os
from collections.abc import Mapping

from rich.console import Console
from rich.table import Table


def write_results(workdir: str, results: Mapping) -> str:
    """Atomically writes `{"step": int, "evals": {"<evaluator>/<dataset>": {metric: value}}}`."""
    path = os.path.join(workdir, "results.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=2)
    os.replace(tmp, path)
    return path


def results_table(results: Mapping) -> Table:
    """One row per evaluator/dataset, one column per metric."""
    metrics = sorted({m for values in results["evals"].values() for m in values})
    table = Table(title=f"results at step {results['step']}")
    table.add_column("evaluator/dataset")
    for m in metrics:
        table.add_column(m, justify="right")
    for name, values in results["evals"].items():
        table.add_row(name, *(f"{values[m]:.4f}" if m in values else "-" for m in metrics))
    return table


def print_results(results: Mapping) -> None:
    Console().print(results_table(results))
