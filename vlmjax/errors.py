"""Errors that the command-line tools print as one line instead of a traceback."""


class VlmjaxError(Exception):
    """A user-facing problem: the message names what is wrong and how to fix it."""


class ConfigError(VlmjaxError):
    """The config has an unknown key, a wrong type or an impossible value."""


class DataError(VlmjaxError):
    """A dataset is missing or unreadable."""


class CheckpointError(VlmjaxError):
    """A checkpoint is missing or does not match the config."""
