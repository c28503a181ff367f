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
    from vlmjax.errors import CheckpointError
    from vlmjax.evaluators.context import EvalContext
    from vlmjax.evaluators.registry import build_evaluators
    from vlmjax.evaluators.report import print_results
    from vlmjax.parallel.mesh import make_mesh
    from vlmjax.train.checkpoint import Checkpointer
    from vlmjax.train.loop import run_evaluators
    from vlmjax.train.metrics_writer import MetricsWriter
    from vlmjax.train.state import state_layout
    from vlmjax.train.workdir import tokenizer_for_run

    validate(config, jax.device_count(), jax.process_count())
    cfg = config.to_dict()
    with Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True) as ckpt:
        if ckpt.latest_step() is None:  # fail before building anything
            raise CheckpointError(f"no checkpoint in {ckpt.directory}; train first with "
                                  "`python -m vlmjax.train --config ... --workdir WORKDIR`")
        mesh = make_mesh(cfg["mesh"])
        tokenizer = tokenizer_for_run(cfg, workdir)
        layout = state_layout(cfg, tokenizer.vocab_size, cfg["tokenizer"]["context_length"], mesh)
        state, _, step = ckpt.restore(step, layout.abstract)
    evaluators = build_evaluators(cfg["evals"], EvalContext(
        graphdef=layout.graphdef, tokenizer=tokenizer,
        context_length=cfg["tokenizer"]["context_length"], mesh=mesh,
        rules=cfg["sharding_rules"], config=cfg, checkpoint=f"step_{step}",
        cache_dir=os.path.join(workdir, "cache")))
    writer = MetricsWriter(workdir, enabled=False)
    results = run_evaluators(evaluators, state["params"], step, workdir, writer)
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
