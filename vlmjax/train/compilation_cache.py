"""JAX's persistent compilation cache for the command-line tools: a resumed, restarted or
repeated run loads its compiled train step (and evaluators) instead of compiling them again."""

import logging
import os

import jax

log = logging.getLogger(__name__)

DISABLE_ENV = "VLMJAX_NO_COMPILATION_CACHE"


def default_cache_dir() -> str:
    """$XDG_CACHE_HOME/vlmjax/jax_compilation_cache (~/.cache/... when XDG_CACHE_HOME is unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "vlmjax", "jax_compilation_cache")


def enable_compilation_cache(directory: str | None = None) -> str | None:
    """Points JAX's persistent compilation cache at `directory` (default: `default_cache_dir()`).

    A cache the user configured already (JAX_COMPILATION_CACHE_DIR or jax.config) is kept;
    VLMJAX_NO_COMPILATION_CACHE=1 turns caching off. Returns the directory in use, or None.
    Call it before the first compilation: JAX reads the setting when it first compiles.
    """
    current = jax.config.jax_compilation_cache_dir
    if current:
        return current
    if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        return None
    path = os.path.abspath(os.path.expanduser(directory or default_cache_dir()))
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:  # a read-only home must not stop training: compile as before
        log.warning("no persistent compilation cache (%s); set JAX_COMPILATION_CACHE_DIR to a "
                    "writable directory or %s=1", e, DISABLE_ENV)
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    return path
