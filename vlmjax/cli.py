"""Shared command-line handling: --config path.py[:arg], --config.key=value, multi-process flags, errors."""

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from vlmjax.errors import VlmjaxError


def parse_args(argv: Sequence[str], description: str, extra: Callable[[argparse.ArgumentParser], None]
               ) -> tuple[argparse.Namespace, list[str]]:
    """Known flags plus the list of `key=value` config overrides."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", help="experiment config file, path.py or path.py:arg")
    parser.add_argument("--workdir", required=True, help="run directory (checkpoints, metrics)")
    group = parser.add_argument_group(
        "multi-process", "give all three, or none: SLURM steps and Cloud TPU pod slices are detected")
    group.add_argument("--coordinator_address", metavar="HOST:PORT",
                       help="process 0's address and a free port (default: $VLMJAX_COORDINATOR_ADDRESS)")
    group.add_argument("--num_processes", type=int, metavar="N",
                       help="number of processes (default: $VLMJAX_NUM_PROCESSES)")
    group.add_argument("--process_id", type=int, metavar="I",
                       help="this process's index, 0..N-1 (default: $VLMJAX_PROCESS_ID)")
    extra(parser)
    args, rest = parser.parse_known_args(argv)
    overrides = []
    for item in rest:
        if not item.startswith("--config."):
            parser.error(f"unrecognized argument {item!r}; config overrides look like "
                         "--config.train.batch_size=128")
        overrides.append(item[len("--config."):])
    return args, overrides


def initialize_processes(args: argparse.Namespace) -> bool:
    """Joins the multi-process job when this is one (parallel.distributed); call it before any JAX work."""
    from vlmjax.parallel.distributed import initialize_distributed
    return initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)


def run_main(main: Callable[[], int | None]) -> None:
    """Runs `main`, turning user-facing errors into one line on stderr and exit status 2."""
    logging.basicConfig(level=os.environ.get("VLMJAX_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "jax._src", "orbax", "grain"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    from vlmjax.train.compilation_cache import enable_compilation_cache
    enable_compilation_cache()  # before anything compiles: later runs reuse the programs
    try:
        code = main()
    except VlmjaxError as e:
        # A clean early stop (TrainingStoppedError) has its own status, which launchers restart on.
        status = getattr(e, "exit_status", 2)
        print(f"{'error' if status == 2 else 'stopped'}: {e}", file=sys.stderr)
        sys.exit(status)
    sys.exit(code or 0)
