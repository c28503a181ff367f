"""`vlmjax.report`: runs x datasets tables with means, bar charts, CLIP_benchmark records."""

import json
import os

import numpy as np
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


# --- study directories: seed tables, scaling fits ---

# Two objectives, a data axis with explicit sizes, two seeds at +-DELTA around a known law each.
LAWS = {"clip": (0.80, 20.0, 1.0), "siglip": (0.90, 2.0, 0.5)}  # (a, b, c) of a - b x^-c
SIZES = {"s1": 1000.0, "s2": 2000.0, "s4": 4000.0, "s8": 8000.0}
DELTA = 0.002


def _law(objective: str, x: float) -> float:
    a, b, c = LAWS[objective]
    return a - b * x ** -c


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    from vlmjax.study.spec import parse_study
    from vlmjax.study.state import claim_directory
    study = parse_study({
        "config": "configs/test/tiny_clip.py",
        "axes": {"objective": {"clip": {"objective.name": "clip"}, "siglip": {"objective.name": "siglip"}},
                 "data": {label: {"train.num_steps": int(x)} for label, x in SIZES.items()},
                 "seed": {"seed": [0, 1]}},
        "scaling": {"data": {"axis": "data", "x": SIZES}}}, "synthetic.py")
    runs = study.runs()
    directory = tmp_path_factory.mktemp("study")
    claim_directory(str(directory), study.record(runs))
    for run in runs:
        if run.labels == {"objective": "siglip", "data": "s8", "seed": "1"}:
            continue  # not finished: left out of the report, and listed
        x = SIZES[run.labels["data"]]
        sign = 1 if run.labels["seed"] == "0" else -1
        acc = _law(run.labels["objective"], x) + sign * DELTA
        os.makedirs(directory / run.name)
        (directory / run.name / "results.json").write_text(json.dumps({"step": int(x), "evals": {
            "zeroshot/cifar10": {"acc1": acc}, "zeroshot/dtd": {"acc1": acc - 0.1}}}))
    return directory


def test_power_law_fit_recovers_known_parameters_and_matches_scipy():
    from scipy.optimize import curve_fit

    from vlmjax.study.scaling import fit_power_law
    x = np.array([1e3, 2e3, 4e3, 8e3, 1.6e4, 3.2e4])
    a, b, c = 0.8, 30.0, 0.6
    fit = fit_power_law(x, a - b * x ** -c)
    assert (fit.a, fit.b, fit.c) == pytest.approx((a, b, c), rel=1e-6)
    assert fit.rmse < 1e-9
    # With noise: the least-squares optimum, as scipy's curve_fit finds it from the true values.
    y = a - b * x ** -c + np.random.default_rng(0).normal(0, 0.004, len(x))
    fit = fit_power_law(x, y)
    reference, _ = curve_fit(lambda t, p, q, r: p - q * t ** -r, x, y, p0=(a, b, c), maxfev=20000)
    assert (fit.a, fit.b, fit.c) == pytest.approx(tuple(reference), rel=1e-4)
    with pytest.raises(ValueError, match="at least 3 distinct"):
        fit_power_law([1.0, 2.0, 2.0], [0.1, 0.2, 0.2])


def test_saturation_is_where_doubling_gains_less_than_half_a_point():
    from vlmjax.study.scaling import C_MIN, PowerLaw, describe_saturation, fit_power_law
    # c = 1: doubling x gains b / (2 x); below 0.005 from x = 100 b.
    law = PowerLaw(a=0.8, b=20.0, c=1.0, rmse=0.0, points=4)
    assert law.saturation_x() == pytest.approx(2000.0)
    assert law.doubling_gain(2000.0) == pytest.approx(0.005)
    assert law(4000.0) - law(2000.0) == pytest.approx(law.doubling_gain(2000.0))
    # (At 1e4 doubling gains 0.1 points, far from a rounding tie of the printed 2 decimals.)
    assert describe_saturation(law, 1e4).startswith("saturated: doubling the largest x (1e+04) adds 0.10")
    assert describe_saturation(law, 1000.0).startswith("not saturated: doubling the largest x (1e+03) "
                                                       "would add 1.00 points")
    assert "does not rise" in describe_saturation(PowerLaw(0.5, -1.0, 0.5, 0.0, 3), 10.0)
    # Points on a straight line in log x: the least-squares exponent runs to its bound.
    x = np.array([1e3, 2e3, 4e3, 8e3])
    flat = fit_power_law(x, 0.3 + 0.02 * np.log2(x / 1e3))
    assert flat.c == pytest.approx(C_MIN) and "no ceiling in sight" in describe_saturation(flat, 8e3)


def test_a_fit_through_three_points_is_not_evidence_of_saturation(tmp_path):
    """Three sizes, one seed: the law passes through the points; the report says so and does
    not count the curve as saturated."""
    import csv

    from vlmjax.report import write_study_report
    from vlmjax.study.spec import parse_study
    from vlmjax.study.state import claim_directory
    sizes = {"s1": 1000.0, "s2": 2000.0, "s4": 4000.0}
    study = parse_study({"config": "configs/test/tiny_clip.py",
                         "axes": {"data": {k: {"train.num_steps": int(x)} for k, x in sizes.items()}},
                         "scaling": {"data": {"axis": "data", "x": sizes}}}, "three.py")
    directory = tmp_path / "study"
    claim_directory(str(directory), study.record(study.runs()))
    for run in study.runs():
        os.makedirs(directory / run.name)
        (directory / run.name / "results.json").write_text(json.dumps({"step": 1, "evals": {
            "zeroshot/cifar10": {"acc1": _law("clip", sizes[run.labels["data"]])}}}))
    with open(write_study_report(str(directory), str(tmp_path / "out"))) as f:
        report = f.read()
    assert "exactly determined (3 points, 3 parameters" in report
    with open(tmp_path / "out" / "scaling_fits.csv") as f:
        assert [row["saturated"] for row in csv.DictReader(f)] == ["False"]


def test_study_report_tables_fits_and_files(study_dir, tmp_path):
    import csv
    out = tmp_path / "out"
    from vlmjax.report import write_study_report
    with open(write_study_report(str(study_dir), str(out))) as f:
        report = f.read()
    assert "15 of 16 runs have results" in report
    assert "Not finished yet (left out): objective=siglip,data=s8,seed=1." in report
    # Seeds at law +- DELTA: mean = the law, sample std = DELTA * sqrt(2) (ddof=1).
    assert "**zero-shot top-1 accuracy (%), mean ± std over seeds (sample std)**" in report
    assert "| objective, data | cifar10 | dtd | mean | n |" in report
    cifar = 100 * _law("clip", 1000.0)
    std = 100 * DELTA * np.sqrt(2)
    assert (f"| clip, s1 | {cifar:.1f} ± {std:.1f} | {cifar - 10:.1f} ± {std:.1f} | "
            f"{cifar - 5:.1f} ± {std:.1f} | 2 |") in report
    siglip_s8 = 100 * _law("siglip", 8000.0) + 100 * DELTA  # seed 0 only
    assert f"| siglip, s8 | {siglip_s8:.1f} | {siglip_s8 - 10:.1f} | {siglip_s8 - 5:.1f} | 1 |" in report
    # Scaling of the mean over datasets (the law - 0.05): clip's symmetric seeds give its law back;
    # siglip lacks one seed at s8, so its fit is the least-squares one of its 7 points. Clip is
    # saturated at 8000 (from 2000 on), siglip is not (from 1.4e4).
    from scipy.optimize import curve_fit
    with open(out / "scaling_fits.csv") as f:
        fits = {row["curve"]: row for row in csv.DictReader(f)}
    got = {o: tuple(float(fits[f"objective={o}"][k]) for k in "abc") for o in LAWS}
    a, b, c = LAWS["clip"]
    assert got["clip"] == pytest.approx((a - 0.05, b, c), rel=1e-6)
    xs = np.array([1000.0, 1000, 2000, 2000, 4000, 4000, 8000])
    ys = np.array([_law("siglip", x) - 0.05 for x in xs]) + DELTA * np.array([1, -1, 1, -1, 1, -1, 1])
    reference, _ = curve_fit(lambda t, p, q, r: p - q * t ** -r, xs, ys, p0=LAWS["siglip"], maxfev=20000)
    assert got["siglip"] == pytest.approx(tuple(reference), rel=1e-4)
    assert fits["objective=clip"]["saturated"] == "True" and fits["objective=siglip"]["saturated"] == "False"
    assert float(fits["objective=clip"]["saturation_x"]) == pytest.approx(2000.0, rel=1e-4)
    a, b, c = got["siglip"]  # doubling 8000 gains b 8000^-c (1 - 2^-c) > 0.005 by the fit
    assert float(fits["objective=siglip"]["doubling_gain_points"]) == pytest.approx(
        100 * b * 8000 ** -c * (1 - 2 ** -c), rel=1e-9)
    assert float(fits["objective=siglip"]["doubling_gain_points"]) > 0.5
    assert "| objective=clip | 4 | 75.0 | 20 | 1.000 | saturated: doubling the largest x (8e+03)" in report
    assert "![zero-shot top-1 accuracy (%) against data size](scaling_data_zeroshot_acc1.png)" in report
    with open(out / "scaling.csv") as f:
        points = list(csv.DictReader(f))
    assert len(points) == 8 and {p["n"] for p in points} == {"1", "2"}
    with open(out / "tables.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 * 3  # groups x (2 datasets + mean)
    with open(out / "runs.csv") as f:
        assert len(list(csv.DictReader(f))) == 15 * 2
    for name in ("scaling_data_zeroshot_acc1.png", "runs/report.md", "runs/zeroshot_acc1.png",
                 "runs/clip_benchmark/objective=clip,data=s1,seed=0/zeroshot_cifar10.json"):
        assert (out / name).stat().st_size > 0, name


def test_report_command_on_a_study_and_a_study_with_nothing_yet(study_dir, tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO
    done = subprocess.run([sys.executable, "-m", "vlmjax.report", str(study_dir)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("# Study synthetic.py") and (study_dir / "report" / "report.md").is_file()
    done = subprocess.run([sys.executable, "-m", "vlmjax.report", str(study_dir), str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "is a study directory: report it alone" in done.stderr
    from vlmjax.report import write_study_report
    from vlmjax.study.spec import parse_study
    from vlmjax.study.state import claim_directory
    empty = parse_study({"config": "c.py", "axes": {"seed": {"seed": [0]}}}, "e.py")
    claim_directory(str(tmp_path / "empty"), empty.record(empty.runs()))
    with pytest.raises(VlmjaxError, match="no run of the study .* has results yet"):
        write_study_report(str(tmp_path / "empty"), str(tmp_path / "o"))
