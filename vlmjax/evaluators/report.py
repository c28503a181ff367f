"""Results files and tables: workdir/results.json and a printed table per evaluator."""

import json
import os
from collections.abc import Mapping

from rich.console import Console
from rich.table import Table

from vlmjax.evaluators.comparison import transfer_summary


def write_results(workdir: str, results: Mapping) -> str:
    """Atomically writes `{"step": int, "evals": {"<evaluator>/<dataset>": {metric: value}}}`.

    Results of the same step already there are kept unless re-evaluated (they describe the same
    checkpoint): evaluating it with another suite adds to the file instead of replacing it.
    """
    path = os.path.join(workdir, "results.json")
    try:
        with open(path) as f:
            previous = json.load(f)
    except (OSError, json.JSONDecodeError):
        previous = {}
    if previous.get("step") == results["step"]:
        results = {**results, "evals": {**previous.get("evals", {}), **results["evals"]}}
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=2)
    os.replace(tmp, path)
    return path


def results_tables(results: Mapping) -> list[Table]:
    """One metric-per-row table per evaluator/dataset (evaluators report different metrics, so
    one shared table would be mostly empty and too wide for a terminal)."""
    tables = []
    for name, values in results["evals"].items():
        table = Table(title=f"{name} at step {results['step']}")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for metric, value in values.items():
            table.add_row(metric, f"{value:.4f}")
        tables.append(table)
    return tables


def transfer_table(results: Mapping) -> Table | None:
    """Setups (zero-shot, linear probe, k-shot methods, fine-tune, unsupervised) by dataset,
    top-1 in %, or None when the results hold no transfer evaluation."""
    datasets, rows = transfer_summary(results)
    if len(rows) < 2:
        return None
    table = Table(title=f"transfer top-1 (%) at step {results['step']}")
    table.add_column("setup")
    for dataset in datasets:
        table.add_column(dataset, justify="right")
    for setup, values in rows.items():
        table.add_row(setup, *(f"{100 * values[d]:.1f}" if d in values else "-" for d in datasets))
    return table


def print_results(results: Mapping) -> None:
    console = Console()
    for table in results_tables(results):
        console.print(table)
    summary = transfer_table(results)
    if summary is not None:
        console.print(summary)
