"""The files of a run directory that training and evaluation share: config and tokenizer."""

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping

import jax
import ml_collections
from jax.experimental import multihost_utils

from vlmjax.data.captions import caption_texts
from vlmjax.data.datasets import caption_vocabulary
from vlmjax.errors import CheckpointError, ConfigError
from vlmjax.tokenizers import Tokenizer, build_tokenizer, load_tokenizer

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


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Writes workdir/config.json (what evaluate and resume read back)."""
    if is_main_process():
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json(indent=2))


def load_saved_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a workdir was trained with, completed with defaults of newer keys."""
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise ConfigError(f"{path} does not exist: {workdir} was not created by vlmjax.train; "
                          "pass --config path/to/config.py or the right --workdir")
    with open(path) as f:
        saved = json.load(f)
    # Keys added to the schema after the run was made take their defaults (which are what the
    # code of that time did), so older workdirs stay evaluable.
    from vlmjax.config import base_config
    return ml_collections.ConfigDict(_with_defaults(saved, base_config().to_dict()))


def _with_defaults(saved: dict, defaults: dict) -> dict:
    merged = dict(saved)
    for key, default in defaults.items():
        if key not in merged:
            merged[key] = default
        elif isinstance(default, dict) and isinstance(merged[key], dict) and key != "evals":
            merged[key] = _with_defaults(merged[key], default)
    return merged


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
    if tok["kind"].startswith("trained_"):
        names, templates = caption_vocabulary(config["data"]["name"])
        texts = caption_texts(names, templates)[0]
        log.info("training a %s tokenizer (vocab %d) on %d captions", tok["kind"],
                 tok["vocab_size"], len(texts))
    tokenizer = build_tokenizer(tok["kind"], path=tok["path"], vocab_size=tok["vocab_size"],
                                texts=texts)
    partial = f"{directory}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    tokenizer.save(partial)
    os.replace(partial, directory)  # a reader never sees half the files
    return tokenizer
