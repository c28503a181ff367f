"""Errors that the command-line tools print as one line instead of a traceback."""


class VlmjaxError(Exception):
    """A user-facing problem: the message names what is wrong and how to fix it."""


class ConfigError(VlmjaxError):
    """The config has an unknown key, a wrong type or an impossible value."""


class DataError(VlmjaxError):
    """A dataset is missing or unreadable."""


class CheckpointError(VlmjaxError):
    """A checkpoint is missing or does not match the config."""


class TrainingError(VlmjaxError):
    """Training cannot go on (e.g. its updates keep being non-finite); the message names the
    last good checkpoint."""


class TrainingStoppedError(VlmjaxError):
    """Training stopped early on request (a signal, the wall-clock limit) after writing a
    checkpoint; running the same command again resumes it."""

    exit_status = 75  # vlmjax.train.preemption.RESUMABLE_EXIT_STATUS: launchers restart on it


class WorkdirBusyError(VlmjaxError):
    """Another process holds the run directory's lock (two trainers on one workdir)."""
