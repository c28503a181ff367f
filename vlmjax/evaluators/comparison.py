"""Side-by-side comparison of runs: datasets as columns, runs as rows, as the survey's tables.

Pure functions over `{run: results.json content}`; `vlmjax.report` does the reading and writing.
"""

import re
from collections.abc import Mapping

import numpy as np

# evaluator kind (the prefix of "<kind>/<dataset>") -> CLIP_benchmark task, in report order.
TASKS = {
    "zeroshot": "zeroshot_classification",
    "caption_zeroshot": "zeroshot_classification",
    "retrieval": "zeroshot_retrieval",
    "captioning": "captioning",
    "dense_segmentation": "zeroshot_segmentation",
    "region_classification": "zeroshot_region_classification",
}
# The tables a report shows per evaluator kind: (metric, title); R@1 both ways for retrieval,
# as the survey's retrieval tables.
HEADLINES = {
    "zeroshot": (("acc1", "zero-shot top-1 accuracy (%)"),),
    "caption_zeroshot": (("acc1", "caption-likelihood zero-shot top-1 (%)"),),
    "retrieval": (("text_retrieval_recall@1", "image-to-text retrieval R@1 (%)"),
                  ("image_retrieval_recall@1", "text-to-image retrieval R@1 (%)")),
    "captioning": (("cider_d", "captioning CIDEr-D (x100)"),),
    "linear_probe": (("acc1", "linear probe top-1 (%)"),),
    "finetune": (("acc1", "fine-tuned top-1 (%)"),),
    "dense_segmentation": (("tokens/miou", "zero-shot segmentation mIoU, projected tokens (%)"),
                           ("maskclip/miou", "zero-shot segmentation mIoU, MaskCLIP (%)"),
                           ("sclip/miou", "zero-shot segmentation mIoU, SCLIP (%)"),
                           ("tokens/miou_fg", "zero-shot segmentation mIoU, foreground only (%)")),
    "region_classification": (("crop/acc1", "region classification top-1, crops (%)"),
                              ("tokens/acc1", "region classification top-1, RoI pooling (%)")),
}
FEWSHOT_METHODS = ("linear_probe", "closed_form", "tip_adapter", "tip_adapter_f", "coop")
_FEWSHOT = re.compile(r"^(?P<method>\w+)/(?P<k>\d+)shot/acc1$")
_UNSUPERVISED = re.compile(r"^(?P<method>\w+)/acc1$")


def _method_order(method: str) -> int:
    return FEWSHOT_METHODS.index(method) if method in FEWSHOT_METHODS else len(FEWSHOT_METHODS)


def headlines(kind: str, runs: Mapping[str, Mapping]) -> list[tuple[str, str]]:
    """(metric, title) of the tables a report shows for an evaluator kind: fixed ones, or for
    few-shot one per (method, k) and for unsupervised one per method, as the runs report them."""
    if kind not in ("fewshot", "unsupervised"):
        return list(HEADLINES.get(kind, ()))
    found = {metric for results in runs.values() for name, metrics in results["evals"].items()
             if name.partition("/")[0] == kind for metric in metrics}
    if kind == "unsupervised":
        return [(m, f"unsupervised ({m.split('/')[0]}) top-1 (%)") for m in sorted(found)
                if _UNSUPERVISED.match(m) and not m.startswith("zeroshot/")]
    matched = [(_FEWSHOT.match(m), m) for m in found]
    ordered = sorted((_method_order(g["method"]), int(g["k"]), m) for g, m in matched if g)
    return [(m, f"{k}-shot {m.split('/')[0]} top-1 (%)") for _, k, m in ordered]


def transfer_summary(results: Mapping) -> tuple[list[str], dict[str, dict[str, float]]]:
    """One run's transfer results as the survey lays them out: (datasets, {setup: {dataset:
    acc1}}) with setups zero-shot, linear probe, k-shot per method, fine-tune, unsupervised."""
    rows: dict[str, dict[str, float]] = {}
    datasets: list[str] = []
    runs = {"run": results}
    setups = [("zeroshot", "acc1", "zero-shot"), ("linear_probe", "acc1", "linear probe")]
    setups += [("fewshot", m, title.replace(" top-1 (%)", "")) for m, title in headlines("fewshot", runs)]
    setups += [("finetune", "acc1", "fine-tune")]
    setups += [("unsupervised", m, title.replace(" top-1 (%)", ""))
               for m, title in headlines("unsupervised", runs)]
    for kind, metric, label in setups:
        names, table = comparison_table(runs, kind, metric)
        if table:
            rows[label] = table["run"]
            datasets += [d for d in names if d not in datasets]
    return datasets, rows


def comparison_table(runs: Mapping[str, Mapping], kind: str, metric: str
                     ) -> tuple[list[str], dict[str, dict[str, float]]]:
    """(datasets, {run: {dataset: value}}) of one evaluator kind and metric, missing cells absent."""
    datasets: list[str] = []
    table: dict[str, dict[str, float]] = {}
    for run, results in runs.items():
        row = {}
        for name, metrics in results["evals"].items():
            evaluator, _, dataset = name.partition("/")
            if evaluator == kind and metric in metrics:
                row[dataset] = float(metrics[metric])
                if dataset not in datasets:
                    datasets.append(dataset)
        if row:  # runs without this evaluator are left out of its table
            table[run] = row
    return datasets, table


def markdown_table(datasets: list[str], table: Mapping[str, Mapping[str, float]], title: str,
                   scale: float = 100.0, row_label: str = "run") -> str:
    """Runs x datasets (values x `scale`, one decimal) plus the mean over datasets a run has
    all of; a missing cell is "-" and leaves that run's mean empty."""
    lines = [f"**{title}**", "", f"| {row_label} | " + " | ".join(datasets) + " | mean |",
             "| --- |" + " ---: |" * (len(datasets) + 1)]
    for run, row in table.items():
        cells = [f"{scale * row[d]:.1f}" if d in row else "-" for d in datasets]
        mean = f"{scale * np.mean([row[d] for d in datasets]):.1f}" if all(
            d in row for d in datasets) else "-"
        lines.append(f"| {run} | " + " | ".join(cells) + f" | {mean} |")
    return "\n".join(lines) + "\n"


def bar_chart(datasets: list[str], table: Mapping[str, Mapping[str, float]], title: str,
              path: str, scale: float = 100.0) -> None:
    """Grouped bars: one group per dataset, one bar per run, saved as PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = list(table)
    width = 0.8 / max(len(runs), 1)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(datasets) * max(1, len(runs)) / 2 + 2), 3.6))
    x = np.arange(len(datasets))
    for i, run in enumerate(runs):
        values = [scale * table[run].get(d, np.nan) for d in datasets]
        bars = ax.bar(x + (i - (len(runs) - 1) / 2) * width, values, width, label=run)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    ax.set_xticks(x, datasets)
    ax.set_ylabel(title)
    top = np.nanmax([scale * v for row in table.values() for v in row.values()] or [1.0])
    ax.set_ylim(0, 1.25 * top)  # headroom for the legend above the bars
    ax.legend(fontsize=8, loc="upper center", ncol=max(1, len(runs)), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def clip_benchmark_records(run: str, results: Mapping) -> dict[str, dict]:
    """One CLIP_benchmark-format record per evaluated dataset of a run, keyed "<kind>_<dataset>"."""
    out = {}
    for name, metrics in results["evals"].items():
        kind, _, dataset = name.partition("/")
        task = TASKS.get(kind, kind)
        out[f"{kind}_{dataset}"] = {"dataset": dataset, "model": run, "pretrained": run,
                                    "task": task, "metrics": dict(metrics), "language": "en",
                                    "step": results.get("step")}
    return out
