"""The files of a run directory that training and evaluation share: config and tokenizer."""

import fcntl
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping

import jax
import ml_collections
from jax.experimental import multihost_utils

from vlmjax.config.schema import complete
from vlmjax.data.registry import get_train_source
from vlmjax.errors import CheckpointError, ConfigError, WorkdirBusyError
from vlmjax.tokenizers import Tokenizer, build_tokenizer, load_tokenizer
from vlmjax.tokenizers.registry import TOKENIZERS

log = logging.getLogger(__name__)


def is_main_process() -> bool:
    return jax.process_index() == 0


def check_writable(workdir: str) -> None:
    """Creates `workdir` and writes a probe file in it, so that an unwritable workdir fails
    before anything is built or compiled."""
    try:
        os.makedirs(workdir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=workdir, prefix=".vlmjax-write-probe-"):
            pass
    except OSError as e:
        raise ConfigError(f"the workdir {workdir} is not writable ({e.strerror or e}); pass a "
                          "--workdir on storage you can write to") from None


def check_free_disk(directory: str, needed_bytes: int) -> None:
    """Fails (before compiling) when the disk of `directory` cannot hold one more checkpoint."""
    free = shutil.disk_usage(directory).free
    if free < needed_bytes:
        raise CheckpointError(f"{directory} has {free / 2 ** 20:.1f} MiB free but one checkpoint "
                              f"of this model needs about {needed_bytes / 2 ** 20:.1f} MiB; free "
                              "some space or pass a --workdir on a larger disk")


def has_trained_steps(workdir: str) -> bool:
    """True when workdir/checkpoints holds a step after 0 (step 0 alone is imported weights)."""
    directory = os.path.join(workdir, "checkpoints")
    names = os.listdir(directory) if os.path.isdir(directory) else []
    return any(name.isdigit() and int(name) > 0 for name in names)


class WorkdirLock:
    """An exclusive OS lock on workdir/.lock while a trainer uses the run directory.

    flock: the kernel releases it when the holder exits, however it dies (SIGKILL included),
    so a stale lock file never blocks a restart. A second trainer fails at once naming the PID
    of the holder. Multi-process jobs lock on process 0 only (`enabled`).
    """

    FILE = ".lock"

    def __init__(self, workdir: str, enabled: bool = True):
        self.path = os.path.join(workdir, self.FILE)
        self.enabled = enabled
        self._fd: int | None = None

    def __enter__(self) -> "WorkdirLock":
        if not self.enabled:
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise WorkdirBusyError(f"another trainer (PID {holder}) is using "
                                   f"{os.path.dirname(self.path)}; wait for it to finish or "
                                   "use another --workdir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Writes workdir/config.json (what evaluate and resume read back), atomically."""
    if is_main_process():
        path = os.path.join(workdir, "config.json")
        with open(path + ".tmp", "w") as f:
            f.write(config.to_json(indent=2))
        os.replace(path + ".tmp", path)


def load_saved_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a workdir was trained with, completed with the defaults of newer keys (what
    the code of that time did), so older workdirs stay evaluable."""
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise ConfigError(f"{path} does not exist: {workdir} was not created by vlmjax.train; "
                          "pass --config path/to/config.py or the right --workdir")
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path} cannot be read ({e}); restore it from a backup or start a new "
                          "--workdir") from None
    return complete(ml_collections.ConfigDict(saved))


def tokenizer_for_run(config: Mapping, workdir: str) -> Tokenizer:
    """The run's tokenizer: the one stored in workdir, else built (and trained) and stored."""
    directory = os.path.join(workdir, "tokenizer")
    if jax.process_count() > 1:
        # Process 0 builds and stores it; every process waits, then reads the very same files.
        if is_main_process() and not os.path.isdir(directory):
            _build_and_save(config, directory)
        multihost_utils.sync_global_devices("vlmjax_tokenizer")
        return load_tokenizer(directory)
    if os.path.isdir(directory):
        return load_tokenizer(directory)
    return _build_and_save(config, directory)


def _build_and_save(config: Mapping, directory: str) -> Tokenizer:
    """Builds (trains, for trained kinds) the config's tokenizer and stores it atomically."""
    tok = config["tokenizer"]
    texts = None
    if TOKENIZERS[tok["kind"]].trains:
        source = get_train_source(config["data"])
        if source.caption_texts is None:
            raise ConfigError(f"config.tokenizer.kind={tok['kind']!r} learns its vocabulary from "
                              f"the training captions, which data.name={config['data']['name']!r} "
                              "does not list; use a fixed vocabulary, e.g. clip_bpe")
        texts = source.caption_texts(config)
        log.info("training a %s tokenizer (vocab %d) on %d captions", tok["kind"],
                 tok["vocab_size"], len(texts))
    tokenizer = build_tokenizer(tok["kind"], path=tok["path"], vocab_size=tok["vocab_size"],
                                texts=texts)
    partial = f"{directory}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    tokenizer.save(partial)
    os.replace(partial, directory)  # a reader never sees half the files
    return tokenizer
