"""Open-vocabulary detection on Fashion-MNIST scenes in the survey's table-10 layout (methods x
dataset: novel / base / all box AP50 and AP), configs/demo/ov_detection_fashion_mnist.py.

    source launch/env.sh && .venv/bin/python bench/ov_detection_table.py --targets T.npz
        [--rows vild,text,oracle] [--steps 1500] [--workdir /tmp/ov_detection_table]
        [--tables_only] [--config.key=value ...]

T.npz: `python -m vlmjax.train.teacher_targets --teacher RUN --config <the demo config>`.
Rows: "vild": the student trained with ViLD-text + ViLD-image (+ DETR box losses);
"text": the same without ViLD-image; "regions": ViLD-image on every item's box (novel items
unlabelled: idealised class-agnostic proposals); "oracle": no student at all, the teacher classifying
the ground-truth boxes' 1x + 1.5x crops (ViLD's crop baseline given perfect boxes: every box
scored for every class by the teacher's softmax over the 10 class embeddings at its own
temperature), an upper reference for the classification part. Every row is evaluated on the
same 1000 test canvases with all 10 classes (COCO AP via pycocotools). --tables_only prints the
table of finished runs (workdir/<row>/results.json). Writes table.md and table.json.
"""

import argparse
import json
import os
import sys

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
CONFIG = os.path.join(REPO, "configs", "demo", "ov_detection_fashion_mnist.py")
EVAL = "ov_detection/fashion_mnist_scenes"
LABELS = {"vild": "ViLD-text + ViLD-image", "text": "ViLD-text only",
          "regions": "ViLD-text + ViLD-image on all items' boxes",
          "oracle": "teacher crops on GT boxes"}


def train_row(row: str, targets: str, steps: int, workdir: str, overrides: list[str]) -> dict:
    """Trains the demo's variant `row` (unless finished) and returns its AP metrics."""
    from vlmjax.config import config_from_args
    from vlmjax.train.loop import train
    path = os.path.join(workdir, "results.json")
    if not os.path.isfile(path):
        config = config_from_args(f"{CONFIG}:{row}:{targets}",
                                  [f"train.num_steps={steps}", *overrides])
        train(config, workdir)
    with open(path) as f:
        return json.load(f)["evals"][EVAL]


def oracle_row(targets: str, num_images: int, workdir: str) -> dict:
    """The teacher classifying ground-truth boxes by their crops (module doc)."""
    import numpy as np

    from vlmjax.data.dense_sources import ScenesSource
    from vlmjax.data.detection_source import NOVEL_CLASSES, read_targets
    from vlmjax.evaluators.box_ap import box_ap, coco_ground_truth
    from vlmjax.train.run import load_run
    from vlmjax.train.teacher_targets import TeacherEmbedder, crop_embeddings
    path = os.path.join(workdir, "results.json")
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)["evals"][EVAL]
    cached = read_targets(targets)
    meta, names = cached["meta"], cached["classnames"]
    run = load_run(meta["teacher"], meta["step"])
    embedder = TeacherEmbedder(run)
    source = ScenesSource("fashion_mnist_scenes", "test", meta["data_dir"],
                          {"image_size": meta["canvas"], "channels": 1}, num_images)
    rows = np.arange(source.num_rows)
    images, _ = source.rows(rows)
    boxes, labels = zip(*source.boxes(rows), strict=True)
    labels = [np.asarray(lab) - 1 for lab in labels]  # classnames without background
    embeds = crop_embeddings(embedder, [im[..., 0] for im in images], list(boxes),
                             meta["crop_scales"])
    scale = float(np.exp(np.asarray(run.params["logit_scale"])))
    dets = []
    for image_id, (image_boxes, e) in enumerate(zip(boxes, embeds, strict=True)):
        logits = scale * e @ cached["class_embed"].T
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        for box, p in zip(image_boxes, probs, strict=True):
            for k in range(len(names)):
                dets.append([image_id, *box, p[k], k])
    novel = [names.index(c) for c in NOVEL_CLASSES]
    subsets = {"novel": novel, "base": [k for k in range(len(names)) if k not in novel],
               "all": list(range(len(names)))}
    metrics = box_ap(coco_ground_truth(list(boxes), labels, len(names)), np.asarray(dets), subsets)
    os.makedirs(workdir, exist_ok=True)
    with open(path, "w") as f:
        json.dump({"step": 0, "evals": {EVAL: metrics}}, f, indent=2)
    return metrics


def table(results: dict[str, dict], teacher: str) -> str:
    """The survey's table-10 layout: method, teacher, student, then novel / base / all."""
    lines = ["| method | teacher | student | AP50 novel | AP50 base | AP50 all | AP novel | "
             "AP base | AP all |", "|---|---|---|---|---|---|---|---|---|"]
    for row, m in results.items():
        student = "-" if row == "oracle" else "ViT 3x96, 8x8 tokens"
        values = [m[f"{s}/{k}"] * 100 for k in ("ap50", "ap") for s in ("novel", "base", "all")]
        lines.append(f"| {LABELS[row]} | {teacher} | {student} | "
                     + " | ".join(f"{v:.1f}" for v in values) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", required=True)
    parser.add_argument("--rows", default="vild,text,regions,oracle")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--num_images", type=int, default=1000, help="oracle row's canvases")
    parser.add_argument("--workdir", default="/tmp/ov_detection_table")
    parser.add_argument("--tables_only", action="store_true")
    args, rest = parser.parse_known_args()
    overrides = [a[len("--config."):] for a in rest if a.startswith("--config.")]
    if len(overrides) != len(rest):
        parser.error(f"unknown arguments {rest}")
    sys.path.insert(0, REPO)
    from vlmjax.data.detection_source import read_targets
    meta = read_targets(args.targets)["meta"]
    teacher = f"{os.path.basename(meta['teacher'])} @ {meta['step']}"
    results = {}
    for row in args.rows.split(","):
        workdir = os.path.join(args.workdir, row)
        if args.tables_only and not os.path.isfile(os.path.join(workdir, "results.json")):
            continue
        results[row] = (oracle_row(args.targets, args.num_images, workdir) if row == "oracle"
                        else train_row(row, args.targets, args.steps, workdir, overrides))
        print(json.dumps({"row": row, **results[row]}), flush=True)
    text = table(results, teacher)
    print(text)
    os.makedirs(args.workdir, exist_ok=True)
    with open(os.path.join(args.workdir, "table.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(args.workdir, "table.json"), "w") as f:
        json.dump({"teacher": meta["teacher"], "step": meta["step"], "rows": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
