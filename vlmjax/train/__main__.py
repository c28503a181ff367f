"""`python -m vlmjax.train --config configs/demo/clip_fashion_mnist.py --workdir DIR [--config.k=v]`.

Without --config, the run's own config (DIR/config.json, e.g. written by `vlmjax.convert`) is
used, with any --config.k=v overrides applied to it: fine-tuning or LiT from imported weights.
"""

import os
import sys

from vlmjax.cli import initialize_processes, parse_args, run_main


def main() -> int:
    args, overrides = parse_args(sys.argv[1:], "Pre-train (or resume) and evaluate a model.",
                                 lambda parser: None, prog="python -m vlmjax.train")
    saved_path = os.path.join(args.workdir, "config.json")
    if not args.config and not os.path.isfile(saved_path):
        raise SystemExit(f"error: --config path/to/config.py is required ({saved_path} does not "
                         "exist, so there is no run config to continue from)")
    initialize_processes(args)
    from vlmjax.config import config_from_args
    base = None
    if not args.config:
        from vlmjax.train.workdir import load_saved_config
        base = load_saved_config(args.workdir)
    config = config_from_args(args.config or "", overrides, base=base)
    from vlmjax.train.loop import train
    train(config, args.workdir)
    return 0


if __name__ == "__main__":
    run_main(main)
