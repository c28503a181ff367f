"""Shared command-line handling: --config path.py[:arg], --config.key=value, multi-process flags, errors.

Nothing here imports JAX until a tool has parsed its arguments, so `--help` answers at once.
"""

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from vlmjax.errors import VlmjaxError

OVERRIDES_HELP = """\
config overrides:
  --config.KEY=VALUE    set any key of the config after the file (or the run's config.json)
                        is loaded; repeat it for several keys, e.g.
                        --config.train.batch_size=128 --config.optimizer.lr=1e-3
                        --config.data.dir=/data/fashion-mnist
                        a path.py:arg after --config passes arg to the file's get_config(arg)"""


def parse_args(argv: Sequence[str], description: str, extra: Callable[[argparse.ArgumentParser], None],
               prog: str | None = None) -> tuple[argparse.Namespace, list[str]]:
    """Known flags plus the list of `key=value` config overrides."""
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=OVERRIDES_HELP,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
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


def enable_compilation_cache() -> None:
    """JAX's persistent compilation cache (train.compilation_cache), so later runs reuse the
    compiled programs; call it after parsing the arguments and before anything compiles."""
    from vlmjax.train.compilation_cache import enable_compilation_cache as enable
    enable()


def initialize_processes(args: argparse.Namespace) -> bool:
    """Joins the multi-process job when this is one (parallel.distributed) and enables the
    compilation cache; call it before any JAX work."""
    enable_compilation_cache()
    from vlmjax.parallel.distributed import initialize_distributed
    return initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)


def _is_abandoned_read(exc_value: BaseException | None, obj: Any) -> bool:
    """An orbax read abandoned after another read of the same checkpoint failed: its coroutine
    or task reports the same failure again when collected, or its callback finds the event loop
    closed at exit."""
    code = getattr(obj, "cr_code", None)
    if code is not None and "orbax" in code.co_filename:
        return True
    return isinstance(exc_value, RuntimeError) and str(exc_value) == "Event loop is closed"


def quiet_abandoned_reads() -> None:
    """Drops the reports of orbax reads abandoned when a checkpoint is unreadable. Each repeats
    the failure the checkpoint code already reported in one line, with a dump of a tensorstore
    object: thousands of lines, after the tool's error, as the process exits."""
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if not _is_abandoned_read(unraisable.exc_value, unraisable.object):
            previous(unraisable)

    sys.unraisablehook = hook
    # asyncio's "Task exception was never retrieved" for orbax's tasks (the task's repr names
    # the orbax file that defines its coroutine).
    logging.getLogger("asyncio").addFilter(lambda record: "orbax" not in record.getMessage())


def run_main(main: Callable[[], int | None]) -> None:
    """Runs `main`, turning user-facing errors into one line on stderr and exit status 2."""
    logging.basicConfig(level=os.environ.get("VLMJAX_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "jax._src", "orbax", "grain"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    quiet_abandoned_reads()
    if not sys.stderr.isatty():
        # Logs and CI: no progress bars (tqdm redraws with carriage returns and escape codes);
        # the train loop logs a line per log_every instead. TQDM_DISABLE=0 brings them back.
        os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        code = main()
    except VlmjaxError as e:
        # A clean early stop (TrainingStoppedError) has its own status, which launchers restart on.
        status = getattr(e, "exit_status", 2)
        print(f"{'error' if status == 2 else 'stopped'}: {e}", file=sys.stderr)
        sys.exit(status)
    sys.exit(code or 0)
