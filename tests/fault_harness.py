"""A fork server for the fault-tolerance tests: real `python -m vlmjax.train` processes, cheaply.

Imports JAX, vlmjax's train loop and its lazily imported libraries once (no JAX backend is
started here), then forks one child per request; each child runs vlmjax.train's own `main`
(its exit statuses, signal handling and error lines) with stdout/stderr in a log file. The
tests kill the children by pid; with a persistent compilation cache nothing recompiles, so a
restart costs about a second instead of an interpreter start plus imports.

Protocol, one JSON object per line: {"argv": [...], "log": path, "poison": [...], "drop": [...]}
-> {"pid": n}; {"wait": pid} -> {"pid": n, "status": exit status or -signal}.
`poison` and `drop` are the test-only data hooks: batch positions (0-based, in the run's data
stream) whose first caption gets an out-of-vocabulary token id (the embedding lookup then
yields NaN, so the loss and gradients are non-finite) or that are dropped from the stream.
Both leave the compiled train step untouched.
"""

import dataclasses
import json
import logging
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import matplotlib  # noqa: E402  (imported lazily by plot_curves: do it once, here)

matplotlib.use("Agg")
import matplotlib.pyplot  # noqa: E402, F401
import tensorboard.summary  # noqa: E402, F401

import vlmjax.data.registry as data_registry  # noqa: E402
import vlmjax.train.__main__ as train_main  # noqa: E402
import vlmjax.train.loop  # noqa: E402, F401
from vlmjax.cli import run_main  # noqa: E402

# Importing absl (through JAX) gave the root logger a handler, which would make the children's
# logging.basicConfig a no-op: leave logging as a fresh interpreter has it.
logging.root.handlers.clear()


class DataHooks:
    """Wraps the train iterator: poisons or drops the batches at the given stream positions."""

    def __init__(self, iterator, poison: set[int], drop: set[int]):
        self._iterator, self._poison, self._drop = iterator, poison, drop

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        while True:
            position = self._iterator.get_state()["next_index"]
            batch = next(self._iterator)
            if position not in self._drop:
                break
        if position in self._poison:
            batch = {**batch, "text": batch["text"].copy()}
            batch["text"][0, 0] = 2 ** 30
        return batch

    def get_state(self) -> dict:
        return self._iterator.get_state()

    def set_state(self, state: dict) -> None:
        self._iterator.set_state(state)


def _child(request: dict) -> None:
    fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    poison, drop = set(request.get("poison", ())), set(request.get("drop", ()))
    if poison or drop:
        # Every training source is built through the data registry: wrap the entries' builders.
        for name, source in list(data_registry.TRAIN_SOURCES.items()):
            data_registry.TRAIN_SOURCES._entries[name] = dataclasses.replace(
                source, build=lambda *a, _build=source.build, **k: DataHooks(_build(*a, **k),
                                                                             poison, drop))
    sys.argv = ["vlmjax.train", *request["argv"]]
    status = 1
    try:
        run_main(train_main.main)
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def serve() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        if "wait" in request:
            _, status = os.waitpid(request["wait"], 0)
            code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            reply = {"pid": request["wait"], "status": code}
        else:
            pid = os.fork()
            if pid == 0:
                _child(request)
            reply = {"pid": pid}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    serve()
