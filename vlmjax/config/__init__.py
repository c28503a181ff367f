"""Config schema, loading with command-line overrides, and validation."""

from vlmjax.config.defaults import base_config
from vlmjax.config.loading import apply_override, config_from_args, load_config_file
from vlmjax.config.validate import resolve_mesh_shape, validate

__all__ = [
    "apply_override", "base_config", "config_from_args", "load_config_file", "resolve_mesh_shape",
    "validate",
]
