"""`python -m vlmjax.train --config configs/demo/clip_fashion_mnist.py --workdir DIR [--config.k=v]`."""

import sys

from vlmjax.cli import initialize_processes, parse_args, run_main


def main() -> int:
    args, overrides = parse_args(sys.argv[1:], "Pre-train (or resume) and evaluate a model.",
                                 lambda parser: None)
    if not args.config:
        raise SystemExit("error: --config path/to/config.py is required for training")
    initialize_processes(args)
    from vlmjax.config import config_from_args
    config = config_from_args(args.config, overrides)
    from vlmjax.train.loop import train
    train(config, args.workdir)
    return 0


if __name__ == "__main__":
    run_main(main)
