"""The command-line tools' first contact: `--help` without importing JAX, naming the config
overrides; and the reports of orbax's abandoned reads dropped after a one-line error."""

import logging
import subprocess
import sys
import types

import pytest

from tests.conftest import REPO
from vlmjax import cli

HEAVY = ("jax", "jaxlib", "flax", "orbax", "optax", "grain", "tensorflow", "torch")


def _imported_modules(importtime_log: str) -> set[str]:
    """Module names from `python -X importtime` (stderr lines 'import time: self | cum | name')."""
    return {line.rsplit("|", 1)[1].strip() for line in importtime_log.splitlines()
            if line.startswith("import time:") and line.count("|") == 2}


@pytest.mark.parametrize("tool", ["train", "evaluate", "caption", "convert"])
def test_help_imports_no_jax(tool):
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", f"vlmjax.{tool}", "--help"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    modules = _imported_modules(result.stderr)
    assert "vlmjax.cli" in modules  # the log does list our imports
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert not heavy, heavy[:10]
    assert result.stdout.startswith(f"usage: python -m vlmjax.{tool} ")
    if tool != "convert":  # the tools that take a config
        assert "--config.KEY=VALUE" in result.stdout
        assert "--config.train.batch_size=128" in result.stdout


@pytest.fixture
def quiet_hooks(monkeypatch):
    """Installs `quiet_abandoned_reads` over a recording unraisable hook; undoes it after."""
    passed = []
    monkeypatch.setattr(sys, "unraisablehook", passed.append)
    asyncio_log = logging.getLogger("asyncio")
    filters = list(asyncio_log.filters)
    cli.quiet_abandoned_reads()
    yield passed, asyncio_log
    asyncio_log.filters[:] = filters


def _coroutine_defined_in(filename: str):
    namespace: dict = {}
    exec(compile("async def read():\n    pass\n", filename, "exec"), namespace)
    return namespace["read"]()


def test_abandoned_orbax_reads_are_not_reported_again(quiet_hooks):
    passed, asyncio_log = quiet_hooks
    orbax_read = _coroutine_defined_in("/venv/site-packages/orbax/checkpoint/_src/fake.py")
    own = _coroutine_defined_in("/work/vlmjax/train/fake.py")
    try:
        error = Exception("Encountered error while reading array index: (). See full "
                          "TensorStore details: <bound method pybind11_...spec of TensorStore({")
        sys.unraisablehook(types.SimpleNamespace(exc_value=error, object=orbax_read))
        sys.unraisablehook(types.SimpleNamespace(
            exc_value=RuntimeError("Event loop is closed"), object=None))
        assert passed == []
        # Anything else still reaches the previous hook.
        for other in (types.SimpleNamespace(exc_value=error, object=own),
                      types.SimpleNamespace(exc_value=RuntimeError("boom"), object=None)):
            sys.unraisablehook(other)
        assert len(passed) == 2
    finally:
        orbax_read.close()
        own.close()
    record = logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "Task exception was never "
                               "retrieved\nfuture: <Task finished coro=<async_deserialize() done, "
                               "defined at /venv/site-packages/orbax/checkpoint/x.py:394>>", (), None)
    assert not asyncio_log.filter(record)
    record.msg = "Task exception was never retrieved\nfuture: <Task finished coro=<mine()>>"
    assert asyncio_log.filter(record)
