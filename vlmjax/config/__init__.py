"""Config schema, loading with command-line overrides, and validation."""

from vlmjax.config.loading import apply_override, config_from_args, load_config_file
from vlmjax.config.schema import base_config, complete, select
from vlmjax.config.validate import resolve_mesh_shape, validate

__all__ = [
    "apply_override", "base_config", "complete", "config_from_args", "load_config_file",
    "resolve_mesh_shape", "select", "validate",
]
