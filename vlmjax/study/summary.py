"""A study directory's results gathered as the survey's comparisons: seed-aggregated tables
(groups of runs that differ only in the seed x benchmarks) and scaling series (a headline score
against data or model size, one curve per remaining axis combination).

Pure data over DIR/study.json and each run's results.json; `vlmjax.report` writes the files.
"""

import dataclasses
import json
import logging
import os
from collections.abc import Mapping

import numpy as np

from vlmjax.evaluators.comparison import HEADLINES, TASKS, comparison_table
from vlmjax.study.state import load_record

log = logging.getLogger(__name__)
SCALING_KINDS = tuple(TASKS) + ("linear_probe", "finetune")  # kinds with fixed headline metrics


@dataclasses.dataclass
class StudyData:
    """A study's record and the results of its runs that have them."""

    directory: str
    record: dict
    results: dict[str, dict]  # run name -> results.json, finished (evaluated) runs only
    missing: list[str]  # run names without results

    @property
    def runs(self) -> list[dict]:
        return self.record["runs"]

    @property
    def axis_names(self) -> list[str]:
        return [a["name"] for a in self.record["axes"]]


def load_study_data(directory: str) -> StudyData:
    """Reads study.json and every run's results.json (runs without one are listed as missing)."""
    record = load_record(directory)
    results, missing = {}, []
    for run in record["runs"]:
        path = os.path.join(directory, run["name"], "results.json")
        try:
            with open(path) as f:
                results[run["name"]] = json.load(f)
        except (OSError, json.JSONDecodeError):
            missing.append(run["name"])
    return StudyData(directory, record, results, missing)


def group_label(labels: Mapping[str, str], drop: set[str]) -> str:
    """`axis=label,...` of the axes not dropped, or "all" when nothing is left."""
    return ",".join(f"{a}={v}" for a, v in labels.items() if a not in drop) or "all"


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def headline_metrics(data: StudyData) -> list[tuple[str, str, str]]:
    """(kind, metric, title) of every headline table the results support, in report order."""
    from vlmjax.evaluators.comparison import headlines
    found = {name.partition("/")[0] for r in data.results.values() for name in r["evals"]}
    kinds = [k for k in TASKS if k in found] + sorted(found - set(TASKS))
    return [(kind, metric, title) for kind in kinds for metric, title in headlines(kind, data.results)]


def seed_table(data: StudyData, kind: str, metric: str
               ) -> tuple[list[str], dict[str, dict[str, list[float]]]]:
    """(datasets, {group: {dataset or "mean": values over seeds}}). "mean" holds, per run that
    has every dataset, its mean over datasets."""
    datasets, table = comparison_table(data.results, kind, metric)
    seed_axis = data.record.get("seed_axis")
    groups: dict[str, dict[str, list[float]]] = {}
    for run in data.runs:
        row = table.get(run["name"])
        if row is None:
            continue
        cells = groups.setdefault(group_label(run["labels"], {seed_axis}), {})
        for dataset, value in row.items():
            cells.setdefault(dataset, []).append(value)
        if all(d in row for d in datasets):
            cells.setdefault("mean", []).append(float(np.mean([row[d] for d in datasets])))
    return datasets, groups


def run_score(results: Mapping, kind: str, metric: str) -> float | None:
    """A run's mean of `metric` over its `kind` datasets, None without any."""
    values = [float(m[metric]) for name, m in results["evals"].items()
              if name.partition("/")[0] == kind and metric in m]
    return float(np.mean(values)) if values else None


def parameter_count(run_dir: str) -> int | None:
    """The number of model parameters in the run's newest checkpoint (its shapes only), or None."""
    try:
        with open(os.path.join(run_dir, "checkpoints", "LATEST")) as f:
            step = int(f.read().strip())
        import orbax.checkpoint as ocp
        path = os.path.join(run_dir, "checkpoints", str(step), "state")
        tree = ocp.StandardCheckpointer().metadata(path).item_metadata.tree["params"]
        import jax
        return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(tree)))
    except Exception as e:  # noqa: BLE001 (any unreadable checkpoint: the caller says what to give)
        log.warning("no parameter count from %s (%s)", run_dir, e)
        return None


def scaling_series(data: StudyData, role: str, kind: str, metric: str
                   ) -> dict[str, dict[float, list[float]]]:
    """{curve: {x: scores over seeds}} of a scaling role ("data" / "model"). x is the role's
    number for the run's label, or for "model" without one the run's parameter count."""
    spec = data.record["scaling"][role]
    axis, given = spec["axis"], spec.get("x", {})
    drop = {axis, data.record.get("seed_axis")}
    curves: dict[str, dict[float, list[float]]] = {}
    for run in data.runs:
        results = data.results.get(run["name"])
        if results is None:
            continue
        score = run_score(results, kind, metric)
        label = run["labels"].get(axis)
        x = given.get(label)
        if x is None and role == "model":
            x = parameter_count(os.path.join(data.directory, run["name"]))
        if score is None or x is None:
            continue
        curves.setdefault(group_label(run["labels"], drop), {}).setdefault(float(x), []).append(score)
    return curves


def scaling_kinds(data: StudyData) -> list[tuple[str, str, str]]:
    """(kind, metric, title) of the headline metrics that scaling plots show."""
    found = {name.partition("/")[0] for r in data.results.values() for name in r["evals"]}
    return [(kind, metric, title) for kind in SCALING_KINDS if kind in found
            for metric, title in HEADLINES[kind]]
