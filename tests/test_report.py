"""`vlmjax.report`: runs x datasets tables with means, bar charts, CLIP_benchmark records."""

import json
import os

import pytest

from vlmjax.errors import VlmjaxError
from vlmjax.evaluators.comparison import clip_benchmark_records, comparison_table, markdown_table
from vlmjax.report import load_runs, write_report

RUNS = {
    "clip": {"step": 10, "evals": {
        "zeroshot/cifar10": {"acc1": 0.5, "acc5": 0.9},
        "zeroshot/dtd": {"acc1": 0.25},
        "retrieval/fashion_mnist": {"image_retrieval_recall@1": 0.75, "text_retrieval_recall@1": 0.5}}},
    "filip": {"step": 20, "evals": {"zeroshot/cifar10": {"acc1": 0.625}}},
}


def test_table_has_runs_as_rows_datasets_as_columns_and_the_mean():
    datasets, table = comparison_table(RUNS, "zeroshot", "acc1")
    assert datasets == ["cifar10", "dtd"]
    text = markdown_table(datasets, table, "zero-shot")
    assert "| clip | 50.0 | 25.0 | 37.5 |" in text
    assert "| filip | 62.5 | - | - |" in text  # a missing dataset leaves the mean empty
    datasets, table = comparison_table(RUNS, "retrieval", "image_retrieval_recall@1")
    assert datasets == ["fashion_mnist"] and list(table) == ["clip"]  # filip has no retrieval


def test_clip_benchmark_records():
    records = clip_benchmark_records("clip", RUNS["clip"])
    assert records["zeroshot_cifar10"] == {
        "dataset": "cifar10", "model": "clip", "pretrained": "clip",
        "task": "zeroshot_classification", "metrics": {"acc1": 0.5, "acc5": 0.9},
        "language": "en", "step": 10}
    assert records["retrieval_fashion_mnist"]["task"] == "zeroshot_retrieval"


def test_report_files_and_a_missing_run(tmp_path):
    for run, results in RUNS.items():
        os.makedirs(tmp_path / run)
        (tmp_path / run / "results.json").write_text(json.dumps(results))
    runs = load_runs([str(tmp_path / "clip"), str(tmp_path / "filip")], ["CLIP", "FILIP"])
    out = tmp_path / "out"
    with open(write_report(runs, str(out))) as f:
        report = f.read()
    assert report.index("zero-shot") < report.index("retrieval")
    assert "| CLIP | 50.0 | 50.0 |" in report and "| CLIP | 75.0 | 75.0 |" in report
    for name in ("zeroshot_acc1.png", "retrieval_text_retrieval_recall1.png",
                 "clip_benchmark/CLIP/zeroshot_dtd.json", "clip_benchmark/FILIP/zeroshot_cifar10.json"):
        assert (out / name).stat().st_size > 0, name
    with pytest.raises(VlmjaxError, match="results.json does not exist; evaluate the run first"):
        load_runs([str(tmp_path / "nothing")])


def test_results_of_the_same_checkpoint_accumulate(tmp_path):
    from vlmjax.evaluators.report import write_results
    write_results(str(tmp_path), {"step": 5, "evals": {"captioning/x": {"cider_d": 1.0}}})
    write_results(str(tmp_path), {"step": 5, "evals": {"zeroshot/x": {"acc1": 0.5}}})
    with open(tmp_path / "results.json") as f:
        assert json.load(f)["evals"] == {"captioning/x": {"cider_d": 1.0}, "zeroshot/x": {"acc1": 0.5}}
    write_results(str(tmp_path), {"step": 6, "evals": {"zeroshot/x": {"acc1": 0.7}}})
    with open(tmp_path / "results.json") as f:
        assert json.load(f) == {"step": 6, "evals": {"zeroshot/x": {"acc1": 0.7}}}  # a new step
