"""`python -m vlmjax.evaluate --workdir DIR [--config c.py] [--step N]`: evaluate a checkpoint.

Without --config the run's own config (workdir/config.json) is used. With an experiment config,
that config (and overrides) describes the model and what to run; with an evaluation suite
(configs/eval/*.py, only `evals`), the run's own config gets the suite's evaluators.
"""

import os
import sys

from vlmjax.cli import initialize_processes, parse_args, run_main


def evaluate(config, workdir: str, step: int | None = None) -> dict:
    """Restores `step` (latest if None) from `workdir`, runs the evaluators, writes results."""
    import jax

    from vlmjax.config import validate
    from vlmjax.config.schema import complete
    from vlmjax.evaluators.registry import build_evaluators
    from vlmjax.evaluators.report import print_results
    from vlmjax.train.distill_teacher import resolve_teacher
    from vlmjax.train.eval_context import eval_context
    from vlmjax.train.loop import run_evaluators
    from vlmjax.train.metrics_writer import MetricsWriter
    from vlmjax.train.run import load_run

    # A distilled run's teacher (step, model section) as the run recorded it.
    config = resolve_teacher(complete(config), workdir)
    validate(config, jax.device_count(), jax.process_count(), training=False)
    run = load_run(workdir, step, config=config)
    ctx = eval_context(run.config, run.graphdef, run.tokenizer, run.mesh,
                       checkpoint=f"step_{run.step}", cache_dir=os.path.join(workdir, "cache"))
    evaluators = build_evaluators(run.config["evals"], ctx)
    writer = MetricsWriter(workdir, enabled=False)
    results = run_evaluators(evaluators, run.weights, run.step, workdir, writer)
    if jax.process_index() == 0:
        print_results(results)
    return results


def main() -> int:
    args, overrides = parse_args(
        sys.argv[1:], "Evaluate a checkpoint of a vlmjax run.",
        lambda p: p.add_argument("--step", type=int, default=None, help="default: latest"),
        prog="python -m vlmjax.evaluate")
    initialize_processes(args)
    from vlmjax.config import config_from_args
    from vlmjax.train.workdir import load_saved_config
    saved = load_saved_config(args.workdir) if os.path.isfile(
        os.path.join(args.workdir, "config.json")) or not args.config else None
    config = config_from_args(args.config or "", overrides, base=saved)  # overrides apply to either
    evaluate(config, args.workdir, args.step)
    return 0


if __name__ == "__main__":
    run_main(main)
