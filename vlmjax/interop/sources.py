"""String-keyed registry of weight sources for `python -m vlmjax.convert --from NAME`.

Each source is a function (source path, workdir, **options) -> None in its own module, imported
lazily so one source's dependencies never load for another; options are the CLI's optional
source-specific flags (big_vision: tokenizer; open_clip: model_config).
"""

import importlib
from collections.abc import Callable
from typing import Any

from vlmjax.errors import ConfigError

# name -> "module:function".
SOURCES: dict[str, str] = {
    "hf": "vlmjax.interop.hf_import:import_hf",
    "open_clip": "vlmjax.interop.open_clip_import:import_open_clip",
    "big_vision": "vlmjax.interop.big_vision_import:import_big_vision",
}


def get_source(name: str) -> Callable[..., Any]:
    """The import function registered as `name`, or a ConfigError saying what exists."""
    if name not in SOURCES:
        raise ConfigError(f"--from {name!r} is not a known source; choose one of "
                          f"{', '.join(SOURCES)}")
    module, _, function = SOURCES[name].partition(":")
    return getattr(importlib.import_module(module), function)
