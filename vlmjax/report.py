"""`python -m vlmjax.report RUN_DIR... [--out DIR] [--names a,b]`: runs side by side.

Reads each run's results.json and writes to --out (default: report/):
- `report.md`: per evaluator kind, Markdown tables of its headline metrics, datasets as columns,
  runs as rows, with the mean (zero-shot acc1, retrieval R@1 both ways, captioning CIDEr-D,
  linear probe / k-shot per method / fine-tune / unsupervised acc1), then per run with transfer
  results one table of every setup (rows) by dataset;
- `<kind>_<metric>.png`: the same as grouped bars;
- `clip_benchmark/<run>/<kind>_<dataset>.json`: CLIP_benchmark-format records of every metric.
Runs are named by their directory (or --names).
"""

import argparse
import json
import os
import sys

from vlmjax.cli import run_main
from vlmjax.errors import VlmjaxError


def load_runs(directories: list[str], names: list[str] | None = None) -> dict[str, dict]:
    """{run name: results.json} for each run directory (VlmjaxError naming a missing file)."""
    if names and len(names) != len(directories):
        raise VlmjaxError(f"--names gives {len(names)} names for {len(directories)} runs")
    runs = {}
    for i, directory in enumerate(directories):
        path = os.path.join(directory, "results.json")
        if not os.path.isfile(path):
            raise VlmjaxError(f"{path} does not exist; evaluate the run first with "
                              f"`python -m vlmjax.evaluate --workdir {directory}`")
        with open(path) as f:
            runs[names[i] if names else os.path.basename(os.path.normpath(directory))] = json.load(f)
    return runs


def write_report(runs: dict[str, dict], out: str) -> str:
    """Writes report.md, one PNG per evaluator kind and the CLIP_benchmark JSON records."""
    from vlmjax.evaluators.comparison import (
        TASKS,
        bar_chart,
        clip_benchmark_records,
        comparison_table,
        headlines,
        markdown_table,
        transfer_summary,
    )

    os.makedirs(out, exist_ok=True)
    found = {name.partition("/")[0] for r in runs.values() for name in r["evals"]}
    kinds = [k for k in TASKS if k in found] + sorted(found - set(TASKS))
    sections = []
    for kind in kinds:
        for metric, title in headlines(kind, runs):
            datasets, table = comparison_table(runs, kind, metric)
            figure = f"{kind}_{metric.replace('@', '').replace('/', '_')}.png"
            sections.append(markdown_table(datasets, table, title))
            bar_chart(datasets, table, title, os.path.join(out, figure))
            sections.append(f"![{title}]({figure})\n")
    for run, results in runs.items():
        datasets, rows = transfer_summary(results)
        if len(rows) > 1:  # more than zero-shot: this run has transfer results
            sections.append(markdown_table(datasets, rows, f"transfer top-1 (%) of {run}",
                                           row_label="setup"))
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(sections))
    for run, results in runs.items():
        directory = os.path.join(out, "clip_benchmark", run)
        os.makedirs(directory, exist_ok=True)
        for key, record in clip_benchmark_records(run, results).items():
            with open(os.path.join(directory, f"{key}.json"), "w") as f:
                json.dump(record, f, indent=1)
    return os.path.join(out, "report.md")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories (each with results.json)")
    parser.add_argument("--out", default="report", help="output directory")
    parser.add_argument("--names", default="", help="comma-separated run names for the tables")
    args = parser.parse_args(sys.argv[1:])
    runs = load_runs(args.runs, args.names.split(",") if args.names else None)
    path = write_report(runs, args.out)
    with open(path) as f:
        print(f.read())
    return 0


if __name__ == "__main__":
    run_main(main)
