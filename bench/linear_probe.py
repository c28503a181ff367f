"""Linear probe speed and accuracy: vlmjax's L-BFGS logistic regression vs scikit-learn's.

On the image features of a trained run (the Fashion-MNIST demo by default: 60,000 train and
10,000 test embeddings), both fit L2-regularised multinomial logistic regression with the same
objective and the same C, and are scored on the test split. Reported:
- one fit at C = 1 on the whole train split, scikit-learn (lbfgs, tol 1e-4, max_iter 1000)
  against vlmjax (median of 3 after a first, compiling call);
- the whole coarse-to-fine C sweep on train minus a 20% validation split (vlmjax warm-starts
  each C from the nearest one done; scikit-learn fits the same values from scratch);
- test accuracy of both refit on all of train with the chosen C.

    .venv/bin/python bench/linear_probe.py [--workdir workdir/demo_clip]

The features come from the run's feature cache (written by the linear_probe evaluator, e.g.
`python -m vlmjax.evaluate --workdir RUN --config configs/eval/transfer_suite.py`) and are
extracted first if missing. Last line: one JSON object of the figures.
"""

import argparse
import glob
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cached_features(workdir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"train" | "test": (features, labels)} of the run's latest checkpoint, extracting them
    (through the linear_probe evaluator's extractor) when the cache has none."""
    def find() -> dict:
        out = {}
        for split in ("train", "test"):
            pattern = os.path.join(workdir, "cache", "features", f"fashion_mnist_{split}_*.npz")
            paths = sorted(glob.glob(pattern), key=os.path.getsize)  # the whole split, not a subset
            if paths:
                with np.load(paths[-1]) as f:
                    out[split] = (f["features"], f["labels"])
        return out

    found = find()
    if len(found) < 2:
        import ml_collections

        from vlmjax.evaluate import evaluate
        from vlmjax.train.workdir import load_saved_config
        config = load_saved_config(workdir)
        config.evals = ml_collections.ConfigDict({"features": dict(
            kind="linear_probe", dataset="fashion_mnist", max_iter=1)})
        evaluate(config, workdir)
        found = find()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="workdir/demo_clip")
    args = parser.parse_args()
    if not os.path.isdir(os.path.join(args.workdir, "checkpoints")):
        sys.exit(f"{args.workdir} has no checkpoint; run the demo first: bash launch/demo.sh")
    from sklearn.linear_model import LogisticRegression

    from vlmjax.transfer.logistic import fit_logistic, search_c
    from vlmjax.transfer.shots import carve_validation

    data = cached_features(args.workdir)
    (x, y), (tx, ty) = data["train"], data["test"]
    classes = int(y.max()) + 1
    keep, held = carve_validation(len(y), 0.2)

    c_fit = 1.0  # the single-fit comparison; the sweep below picks C for accuracy
    start = time.perf_counter()
    head = fit_logistic(x, y, classes, [c_fit])[0]  # compiles
    ours_first = time.perf_counter() - start
    times = []
    for _ in range(3):
        start = time.perf_counter()
        head = fit_logistic(x, y, classes, [c_fit])[0]
        times.append(time.perf_counter() - start)
    ours_fit = float(np.median(times))
    start = time.perf_counter()
    best, sweep = search_c((x[keep], y[keep]), (x[held], y[held]), classes, pad_rows_to=len(y))
    best_c = best.c
    ours_sweep = time.perf_counter() - start
    start = time.perf_counter()
    for c in sweep:
        LogisticRegression(C=c, max_iter=1000).fit(x[keep], y[keep])
    sk_sweep = time.perf_counter() - start

    sk_times = []
    for _ in range(3):
        start = time.perf_counter()
        LogisticRegression(C=c_fit, max_iter=1000).fit(x, y)
        sk_times.append(time.perf_counter() - start)
    sk_fit = float(np.median(sk_times))
    head = fit_logistic(x, y, classes, [best_c], init=best)[0]  # refit on train + val
    reference = LogisticRegression(C=best_c, max_iter=1000).fit(x, y)
    ours_acc = float(np.mean(head.logits(tx).argmax(1) == ty))
    sk_acc = float(reference.score(tx, ty))

    print(f"features: train {x.shape}, test {tx.shape}; C chosen by the sweep: {best_c:.4g} "
          f"({len(sweep)} values of C)")
    print(f"{'':28s}{'vlmjax':>12s}{'scikit-learn':>14s}{'speed-up':>10s}")
    print(f"{'one fit at C=1 (s)':28s}{ours_fit:12.2f}{sk_fit:14.2f}{sk_fit / ours_fit:9.1f}x")
    print(f"{'  first call (compiling)':28s}{ours_first:12.2f}")
    print(f"{'C sweep (s)':28s}{ours_sweep:12.2f}{sk_sweep:14.2f}{sk_sweep / ours_sweep:9.1f}x")
    print(f"{'test accuracy, chosen C':28s}{ours_acc:12.4f}{sk_acc:14.4f}{'':>10s}")
    print(json.dumps({"chosen_C": best_c,
                      "fit": {"C": c_fit, "vlmjax_s": round(ours_fit, 3), "sklearn_s": round(sk_fit, 3),
                              "speedup": round(sk_fit / ours_fit, 2),
                              "vlmjax_compile_s": round(ours_first - ours_fit, 2)},
                      "sweep": {"vlmjax_s": round(ours_sweep, 2), "sklearn_s": round(sk_sweep, 2),
                                "speedup": round(sk_sweep / ours_sweep, 2), "num_c": len(sweep)},
                      "accuracy": {"vlmjax": ours_acc, "sklearn": sk_acc,
                                   "difference_points": round(100 * (ours_acc - sk_acc), 2)}}))


if __name__ == "__main__":
    main()
