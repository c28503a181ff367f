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


def test_transfer_results_get_a_table_per_setup_and_a_summary(tmp_path):
    from vlmjax.evaluators.comparison import headlines, transfer_summary
    fewshot = {"coop/1shot/acc1": 0.5, "coop/1shot/acc1_std": 0.1, "linear_probe/16shot/acc1": 0.8,
               "linear_probe/2shot/acc1": 0.6}
    results = {"step": 5, "evals": {
        "zeroshot/pets": {"acc1": 0.4}, "zeroshot/dtd": {"acc1": 0.3},
        "linear_probe/pets": {"acc1": 0.9, "C": 1.0}, "fewshot/pets": fewshot,
        "finetune/pets": {"acc1": 0.95}, "unsupervised/pets": {"zeroshot/acc1": 0.4, "linear/acc1": 0.45}}}
    # k-shot tables in method order (linear probe first), then by k; not the std.
    assert [m for m, _ in headlines("fewshot", {"a": results})] == [
        "linear_probe/2shot/acc1", "linear_probe/16shot/acc1", "coop/1shot/acc1"]
    assert headlines("unsupervised", {"a": results}) == [("linear/acc1", "unsupervised (linear) top-1 (%)")]
    datasets, rows = transfer_summary(results)
    assert datasets == ["pets", "dtd"]
    assert list(rows) == ["zero-shot", "linear probe", "2-shot linear_probe", "16-shot linear_probe",
                          "1-shot coop", "fine-tune", "unsupervised (linear)"]
    assert rows["zero-shot"] == {"pets": 0.4, "dtd": 0.3} and rows["1-shot coop"] == {"pets": 0.5}
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(results))
    with open(write_report(load_runs([str(run)]), str(tmp_path / "out"))) as f:
        report = f.read()
    assert "**transfer top-1 (%) of run**" in report and "| 16-shot linear_probe | 80.0 | - | - |" in report
    assert os.path.isfile(tmp_path / "out" / "fewshot_linear_probe_16shot_acc1.png")
