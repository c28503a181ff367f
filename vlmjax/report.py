"""`python -m vlmjax.report RUN_DIR... [--out DIR] [--names a,b]`: runs side by side;
`python -m vlmjax.report STUDY_DIR [--out DIR]`: a study (`python -m vlmjax.study`) as the survey reads it.

Runs: reads each run's results.json and writes to --out (default: report/):
- `report.md`: per evaluator kind, Markdown tables of its headline metrics, datasets as columns,
  runs as rows, with the mean (zero-shot acc1, retrieval R@1 both ways, captioning CIDEr-D,
  linear probe / k-shot per method / fine-tune / unsupervised acc1), then per run with transfer
  results one table of every setup (rows) by dataset;
- `<kind>_<metric>.png`: the same as grouped bars;
- `clip_benchmark/<run>/<kind>_<dataset>.json`: CLIP_benchmark-format records of every metric.
Runs are named by their directory (or --names).

A study directory (it holds study.json) gets, in --out (default: STUDY_DIR/report/):
- `report.md`: per headline metric, groups of runs that differ only in the seed (e.g. the
  objectives) x benchmarks, mean +- sample std over seeds; then, for each scaling axis of the
  study (`scaling` in its study file: data size, model size), the headline score against it per
  objective with the fitted saturating power law acc(x) = a - b x^-c and where it saturates
  (doubling x gains < 0.5 points); runs not finished yet are listed;
- `scaling_<role>_<kind>_<metric>.png`: those curves; `tables.csv`, `scaling.csv`,
  `scaling_fits.csv`, `runs.csv`: the numbers; `runs/`: the per-run report above of its runs.
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


def _cell(values: list[float], scale: float = 100.0) -> str:
    """"m" for one value, "m ± s (n)" over seeds (sample std), "-" for none."""
    from vlmjax.study.summary import mean_std
    if not values:
        return "-"
    mean, std = mean_std(values)
    return f"{scale * mean:.1f}" if len(values) == 1 else f"{scale * mean:.1f} ± {scale * std:.1f}"


def _seed_tables(data, out: str) -> tuple[list[str], list[list]]:
    """Markdown sections of the groups x benchmarks tables and the rows of tables.csv."""
    from vlmjax.study.summary import headline_metrics, mean_std, seed_table
    sections, rows = [], []
    seed_axis = data.record.get("seed_axis")
    for kind, metric, title in headline_metrics(data):
        datasets, groups = seed_table(data, kind, metric)
        if not groups:
            continue
        seeds = max(len(v) for cells in groups.values() for v in cells.values())
        note = f", mean ± std over {seed_axis}s (sample std)" if seeds > 1 else ""
        shown = [a for a in data.axis_names if a != seed_axis]
        lines = [f"**{title}{note}**", "", f"| {', '.join(shown) or 'runs'} | " + " | ".join(datasets)
                 + " | mean | n |", "| --- |" + " ---: |" * (len(datasets) + 2)]
        for group, cells in groups.items():
            n = max(len(v) for v in cells.values())
            labels = ", ".join(part.partition("=")[2] for part in group.split(",")) if shown else group
            lines.append(f"| {labels} | " + " | ".join(_cell(cells.get(d, [])) for d in datasets)
                         + f" | {_cell(cells.get('mean', []))} | {n} |")
            for dataset in [*datasets, "mean"]:
                if cells.get(dataset):
                    mean, std = mean_std(cells[dataset])
                    rows.append([group, kind, metric, dataset, mean, std, len(cells[dataset])])
        sections.append("\n".join(lines) + "\n")
    return sections, rows


def _scaling_figure(curves: dict, fits: dict, title: str, xlabel: str, path: str) -> None:
    """Mean ± std over seeds per x, one colour per curve, its fitted power law dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from vlmjax.study.scaling import SATURATION_POINTS
    from vlmjax.study.summary import mean_std
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    for i, (curve, points) in enumerate(curves.items()):
        xs = sorted(points)
        stats = [mean_std(points[x]) for x in xs]
        color = f"C{i % 10}"
        ax.errorbar(xs, [100 * m for m, _ in stats], yerr=[100 * s for _, s in stats], fmt="o",
                    color=color, capsize=3, label=curve)
        fit = fits.get(curve)
        if fit is not None:
            grid = np.geomspace(min(xs), 2 * max(xs), 100)
            ax.plot(grid, 100 * fit(grid), "--", color=color, linewidth=1)
            x_sat = fit.saturation_x()
            if fit.b > 0 and min(xs) <= x_sat <= 2 * max(xs):  # saturated from here (dotted)
                ax.axvline(x_sat, color=color, linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{title}\nmean over datasets", fontsize=9)
    ax.set_title("points: mean ± std over seeds; dashed: a - b x^-c; dotted: doubling gains < "
                 f"{SATURATION_POINTS} points", fontsize=8)
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _scaling_sections(data, out: str) -> tuple[list[str], list[list], list[list]]:
    """Markdown, scaling.csv rows and scaling_fits.csv rows of every scaling role and metric."""
    from vlmjax.study.scaling import describe_saturation, fit_power_law
    from vlmjax.study.summary import mean_std, scaling_kinds, scaling_series
    sections, points, fit_rows = [], [], []
    for role, spec in data.record.get("scaling", {}).items():
        explicit = bool(spec.get("x"))
        xlabel = (f"{spec['axis']} ({'training images' if role == 'data' else 'x'})" if explicit
                  else f"{spec['axis']} (parameters)")
        for kind, metric, title in scaling_kinds(data):
            curves = scaling_series(data, role, kind, metric)
            if not curves:
                continue
            fits, lines = {}, [f"**{title} against {role} size ({spec['axis']}), acc(x) = a - b x^-c**", "",
                               "| curve | points | a (%) | b | c | saturation |",
                               "| --- | ---: | ---: | ---: | ---: | --- |"]
            for curve, by_x in curves.items():
                xs = sorted(by_x)
                for x in xs:
                    mean, std = mean_std(by_x[x])
                    points.append([role, kind, metric, curve, x, mean, std, len(by_x[x])])
                all_x = [x for x in xs for _ in by_x[x]]
                all_y = [v for x in xs for v in by_x[x]]
                if len(xs) < 3:
                    lines.append(f"| {curve} | {len(xs)} | - | - | - | too few sizes to fit (3 needed) |")
                    continue
                fit = fits[curve] = fit_power_law(all_x, all_y)
                verdict = describe_saturation(fit, max(xs))
                if len(all_x) == 3:  # three parameters through three points: no test of the law
                    verdict = (f"exactly determined (3 points, 3 parameters: the curve passes "
                               f"through them), so no evidence either way; by the fit: {verdict}. "
                               "Add a point or seeds")
                lines.append(f"| {curve} | {len(xs)} | {100 * fit.a:.1f} | {fit.b:.4g} | {fit.c:.3f} "
                             f"| {verdict} |")
                fit_rows.append([role, kind, metric, curve, fit.a, fit.b, fit.c, fit.rmse, fit.points,
                                 fit.saturation_x(), 100 * fit.doubling_gain(max(xs)),
                                 verdict.startswith("saturated")])
            figure = f"scaling_{role}_{kind}_{metric.replace('@', '').replace('/', '_')}.png"
            _scaling_figure(curves, fits, title, xlabel, os.path.join(out, figure))
            sections.append("\n".join(lines) + f"\n\n![{title} against {role} size]({figure})\n")
    return sections, points, fit_rows


def _write_csv(path: str, header: list[str], rows: list[list]) -> None:
    import csv
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def write_study_report(directory: str, out: str) -> str:
    """report.md, the scaling PNGs and the CSVs of a study directory; the per-run report in out/runs."""
    from vlmjax.study.summary import load_study_data
    data = load_study_data(directory)
    if not data.results:
        raise VlmjaxError(f"no run of the study in {directory} has results yet (results.json); "
                          "run the study first: python -m vlmjax.study --config STUDY.py --workdir "
                          f"{directory}")
    os.makedirs(out, exist_ok=True)
    header = [f"# Study {data.record.get('study', directory)}", "",
              f"{len(data.results)} of {len(data.runs)} runs have results; axes: "
              + ", ".join(f"{a['name']} ({', '.join(a['labels'])})" for a in data.record["axes"]) + "."]
    if data.missing:
        header.append(f"Not finished yet (left out): {', '.join(data.missing)}.")
    tables, table_rows = _seed_tables(data, out)
    scaling, points, fit_rows = _scaling_sections(data, out)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(header) + "\n\n" + "\n".join(tables + scaling))
    _write_csv(os.path.join(out, "tables.csv"),
               ["group", "kind", "metric", "dataset", "mean", "std", "n"], table_rows)
    _write_csv(os.path.join(out, "scaling.csv"),
               ["role", "kind", "metric", "curve", "x", "mean", "std", "n"], points)
    _write_csv(os.path.join(out, "scaling_fits.csv"),
               ["role", "kind", "metric", "curve", "a", "b", "c", "rmse", "points", "saturation_x",
                "doubling_gain_points", "saturated"], fit_rows)
    axes = data.axis_names
    _write_csv(os.path.join(out, "runs.csv"), ["run", *axes, "step", "eval", "metric", "value"],
               [[run["name"], *(run["labels"].get(a, "") for a in axes), data.results[run["name"]]["step"],
                 name, metric, value]
                for run in data.runs if run["name"] in data.results
                for name, metrics in data.results[run["name"]]["evals"].items()
                for metric, value in metrics.items()])
    write_report(data.results, os.path.join(out, "runs"))
    return os.path.join(out, "report.md")


def is_study(directory: str) -> bool:
    from vlmjax.study.state import RECORD
    return os.path.isfile(os.path.join(directory, RECORD))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories (each with results.json), or one "
                        "study directory (with study.json)")
    parser.add_argument("--out", default="", help="output directory (default: report/, for a study "
                        "STUDY_DIR/report/)")
    parser.add_argument("--names", default="", help="comma-separated run names for the tables")
    args = parser.parse_args(sys.argv[1:])
    studies = [d for d in args.runs if is_study(d)]
    if studies:
        if len(args.runs) > 1 or args.names:
            raise VlmjaxError(f"{studies[0]} is a study directory: report it alone, "
                              f"`python -m vlmjax.report {studies[0]}`")
        path = write_study_report(studies[0], args.out or os.path.join(studies[0], "report"))
    else:
        runs = load_runs(args.runs, args.names.split(",") if args.names else None)
        path = write_report(runs, args.out or "report")
    with open(path) as f:
        print(f.read())
    return 0


if __name__ == "__main__":
    run_main(main)
