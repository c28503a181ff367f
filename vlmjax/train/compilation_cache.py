"""JAX's persistent compilation cache for the command-line tools: a resumed, restarted or
repeated run loads its compiled train step (and evaluators) instead of compiling them again."""

import hashlib
import logging
import os
import platform

import jax
import jaxlib

log = logging.getLogger(__name__)

DISABLE_ENV = "VLMJAX_NO_COMPILATION_CACHE"


def host_key() -> str:
    """A short hash of what compiled CPU code depends on: the machine, the CPU model and its
    ISA flags, and the jax / jaxlib versions. XLA:CPU compiles for the host's features and
    refuses (aborts on) an executable built for other ones, and JAX's cache key does not
    include them, so a home directory shared by different hosts (a cluster, a migrated VM)
    must not share entries."""
    parts = [platform.machine(), jax.__version__, jaxlib.__version__]
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            info = f.read()
        parts += sorted({line.split(":", 1)[1].strip() for line in info.splitlines()
                         if line.startswith(("model name", "flags", "Features"))})
    except OSError:  # not Linux: the processor string is what is known
        parts.append(platform.processor())
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def default_cache_dir() -> str:
    """$XDG_CACHE_HOME/vlmjax/jax_compilation_cache/<host key> (~/.cache/... when XDG_CACHE_HOME
    is unset): one cache per host class (`host_key`)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "vlmjax", "jax_compilation_cache", host_key())


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
    virtual = _virtual_cpu_devices()
    if virtual > 1:
        # Seen on jax 0.10.2: some multi-device programs of the virtual CPU mesh (the
        # gradient-accumulation step of tests/test_sharding.py) abort when loaded back from the
        # persistent cache. Virtual devices are for tests and debugging: compile instead.
        log.info("no persistent compilation cache with %d virtual CPU devices", virtual)
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


def _virtual_cpu_devices() -> int:
    """The number of CPU devices XLA_FLAGS asks for (--xla_force_host_platform_device_count),
    1 when none."""
    for flag in os.environ.get("XLA_FLAGS", "").split():
        name, _, value = flag.partition("=")
        if name == "--xla_force_host_platform_device_count" and value.isdigit():
            return int(value)
    return 1
