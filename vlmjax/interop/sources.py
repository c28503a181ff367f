"""String-keyed registry of weight sources for `python -m vlmjax.convert --from NAME`.

Each source is a function (source path, workdir, **options) -> None in its own module, loaded
only when chosen so one source's dependencies (torch, ml_dtypes, ...) never load for another;
options are the CLI's optional source-specific flags (big_vision: tokenizer; open_clip:
model_config).
"""

from collections.abc import Callable
from typing import Any

from vlmjax.errors import ConfigError


def _hf() -> Callable[..., Any]:
    from vlmjax.interop.hf_import import import_hf
    return import_hf


def _open_clip() -> Callable[..., Any]:
    from vlmjax.interop.open_clip_import import import_open_clip
    return import_open_clip


def _big_vision() -> Callable[..., Any]:
    from vlmjax.interop.big_vision_import import import_big_vision
    return import_big_vision


# name -> a loader of its import function.
SOURCES: dict[str, Callable[[], Callable[..., Any]]] = {
    "hf": _hf,
    "open_clip": _open_clip,
    "big_vision": _big_vision,
}


def get_source(name: str) -> Callable[..., Any]:
    """The import function registered as `name`, or a ConfigError saying what exists."""
    if name not in SOURCES:
        raise ConfigError(f"--from {name!r} is not a known source; choose one of "
                          f"{', '.join(SOURCES)}")
    return SOURCES[name]()
