"""Open-vocabulary segmentation on Fashion-MNIST scenes in the survey's table-11 layout (methods x
dataset: novel / base / all mIoU, hIoU), configs/demo/ov_segmentation_fashion_mnist.py.

    source launch/env.sh && .venv/bin/python bench/ov_segmentation_table.py --labels L.npz
        [--rows teacher,student,supervised] [--steps 1500] [--num_images 1000]
        [--workdir /tmp/ov_segmentation_table] [--tables_only] [--config.key=value ...]

L.npz: `python -m vlmjax.train.teacher_pseudo_labels --teacher RUN --config <the demo config>`.
Rows: "teacher": no student, the teacher's own training-free dense zero-shot (the pseudo-labels'
dense method and background rule) on the test canvases (MaskCLIP); "student": the demo's
ov_segmenter trained on the pseudo-labels (MaskCLIP+). Both on the same first `num_images`
test canvases with all 10 classes, scored by `evaluators.ov_segmentation.split_metrics`.
"supervised" (a reference, not an open-vocabulary method): the same student trained on the
same canvases' GROUND-TRUTH masks of every class (the pseudo-label file with its masks
replaced): what the student and budget reach when the labels are right.
Writes table.md and table.json under the workdir.
"""

import argparse
import json
import os
import sys

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
CONFIG = os.path.join(REPO, "configs", "demo", "ov_segmentation_fashion_mnist.py")
EVAL = "ov_segmentation/fashion_mnist_scenes"
LABELS = {"teacher": "teacher, training-free dense zero-shot",
          "student": "student on pseudo-labels (MaskCLIP+)",
          "supervised": "student on ground-truth masks (reference)"}


def student_row(labels: str, steps: int, num_images: int, workdir: str,
                overrides: list[str]) -> dict:
    """Trains the demo (unless finished) and returns its ov_segmentation metrics."""
    from vlmjax.config import config_from_args
    from vlmjax.data.pseudo_seg_source import read_pseudo_labels
    from vlmjax.train.loop import train
    path = os.path.join(workdir, "results.json")
    if not os.path.isfile(path):
        meta = read_pseudo_labels(labels)["meta"]
        config = config_from_args(f"{CONFIG}:{labels}", [
            f"train.num_steps={steps}", f"evals.segment.num_images={num_images}",
            f"data.teacher={meta['teacher']}", f"data.teacher_step={meta['step']}", *overrides])
        train(config, workdir)
    with open(path) as f:
        return json.load(f)["evals"][EVAL]


def ground_truth_labels(labels: str, out: str) -> str:
    """`labels` with its masks replaced by the canvases' ground-truth masks (module doc)."""
    import numpy as np

    from vlmjax.data.datasets import load_split
    from vlmjax.data.pseudo_seg_source import read_pseudo_labels
    from vlmjax.data.scenes import get_scene_set, scene, split_pool
    if os.path.isfile(out):
        return out
    meta = read_pseudo_labels(labels)["meta"]
    with np.load(labels) as f:
        arrays = dict(f)
    images, items = load_split("fashion_mnist", meta["data_dir"], "train")
    pool, spec = split_pool(images, items, "train"), get_scene_set(meta["dataset"])
    arrays["masks"] = np.stack([scene(spec, pool, "train", meta["canvas"], i, meta["seed"]).mask
                                for i in range(len(arrays["masks"]))])
    os.makedirs(os.path.dirname(out), exist_ok=True)
    np.savez(out, **arrays)
    return out


def teacher_row(labels: str, num_images: int, workdir: str) -> dict:
    """The teacher's training-free segmentation of the test canvases (module doc)."""
    from vlmjax.data.pseudo_seg_source import read_pseudo_labels
    from vlmjax.train.run import load_run
    from vlmjax.train.teacher_pseudo_labels import TeacherSegmenter, stored_rule, teacher_baseline
    path = os.path.join(workdir, "results.json")
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)["evals"][EVAL]
    meta = read_pseudo_labels(labels)["meta"]
    segmenter = TeacherSegmenter(load_run(meta["teacher"], meta["step"]), meta["method"],
                                 meta["stride"])
    metrics = teacher_baseline(segmenter, stored_rule(labels), data_dir=meta["data_dir"],
                               canvas=meta["canvas"], num_images=num_images)
    os.makedirs(workdir, exist_ok=True)
    with open(path, "w") as f:
        json.dump({"step": 0, "evals": {EVAL: metrics}}, f, indent=2)
    return metrics


def table(results: dict[str, dict], teacher: str) -> str:
    """The survey's table-11 layout: method, teacher, student, then novel / base / all mIoU, hIoU."""
    lines = ["| method | teacher | student | mIoU novel | mIoU base | mIoU all (with bg) | hIoU |"
             " bg IoU |", "|---|---|---|---|---|---|---|---|"]
    for row, m in results.items():
        student = "-" if row == "teacher" else "ViT 3x96, 8x8 tokens"
        values = [m[k] * 100 for k in ("novel/miou", "base/miou", "all/miou", "hiou",
                                       "background_iou")]
        lines.append(f"| {LABELS[row]} | {teacher} | {student} | "
                     + " | ".join(f"{v:.1f}" for v in values) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", required=True)
    parser.add_argument("--rows", default="teacher,student")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--num_images", type=int, default=1000)
    parser.add_argument("--workdir", default="/tmp/ov_segmentation_table")
    parser.add_argument("--tables_only", action="store_true")
    args, rest = parser.parse_known_args()
    overrides = [a[len("--config."):] for a in rest if a.startswith("--config.")]
    if len(overrides) != len(rest):
        parser.error(f"unknown arguments {rest}")
    sys.path.insert(0, REPO)
    from vlmjax.data.pseudo_seg_source import read_pseudo_labels
    meta = read_pseudo_labels(args.labels)["meta"]
    teacher = f"{os.path.basename(meta['teacher'])} @ {meta['step']} ({meta['method']})"
    results = {}
    for row in args.rows.split(","):
        workdir = os.path.join(args.workdir, row)
        if args.tables_only and not os.path.isfile(os.path.join(workdir, "results.json")):
            continue
        if row == "teacher":
            results[row] = teacher_row(args.labels, args.num_images, workdir)
        else:
            labels = (args.labels if row == "student" else ground_truth_labels(
                args.labels, os.path.join(args.workdir, "ground_truth_labels.npz")))
            results[row] = student_row(labels, args.steps, args.num_images, workdir, overrides)
        print(json.dumps({"row": row, **results[row]}), flush=True)
    text = table(results, teacher)
    print(text)
    os.makedirs(args.workdir, exist_ok=True)
    with open(os.path.join(args.workdir, "table.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(args.workdir, "table.json"), "w") as f:
        json.dump({"teacher": meta["teacher"], "step": meta["step"], "method": meta["method"],
                   "background": meta["background"], "num_scenes": meta["num_scenes"],
                   "rows": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
