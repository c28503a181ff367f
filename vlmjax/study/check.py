"""Every run of a study is built and validated before the first one starts; all problems are listed.

A run's config is made exactly as `python -m vlmjax.train` makes it (`config_from_args` on the
same file and `--config.key=value` texts), then checked by `vlmjax.config.validate` for the
device and process counts of the machine it will run on.
"""

import os
from collections.abc import Iterable

import ml_collections

from vlmjax.config import config_from_args, validate
from vlmjax.errors import ConfigError, VlmjaxError
from vlmjax.study.spec import Run


def resolve_config_path(spec: str, roots: Iterable[str]) -> str:
    """`path.py[:arg]` with the path made absolute: as given if absolute, else the first of `roots`
    (the current directory, then the repository root) that has it."""
    path, sep, arg = spec.partition(":")
    if not os.path.isabs(path):
        for root in roots:
            if os.path.isfile(os.path.join(root, path)):
                path = os.path.join(root, path)
                break
    return os.path.abspath(path) + sep + arg


def build_config(run: Run, config_path: str) -> ml_collections.ConfigDict:
    """The run's config, as `vlmjax.train` builds it from the command line the study gives it."""
    args = [a.removeprefix("--config.") for a in run.override_args()]
    return config_from_args(config_path, args)


def check_runs(runs: list[Run], roots: Iterable[str], num_devices: int, process_count: int = 1
               ) -> dict[str, ml_collections.ConfigDict]:
    """{run name: config} when every run is valid; else ConfigError listing each problem once,
    with the runs it affects."""
    roots = list(roots)
    configs: dict[str, ml_collections.ConfigDict] = {}
    problems: dict[str, list[str]] = {}  # message -> run names
    for run in runs:
        try:
            config = build_config(run, resolve_config_path(run.config, roots))
            validate(config, num_devices, process_count)
        except (VlmjaxError, ValueError, TypeError, KeyError, AttributeError) as e:
            message = str(e) if isinstance(e, VlmjaxError) else f"{type(e).__name__}: {e}"
            problems.setdefault(message, []).append(run.name)
            continue
        configs[run.name] = config
    if problems:
        affected = sum(map(len, problems.values()))
        lines = [f"{len(problems)} problem(s) in {affected} of {len(runs)} runs (checked for {num_devices} "
                 f"devices, {process_count} process(es)); nothing was started:"]
        for message, names in problems.items():
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            lines.append(f"  - {message} [{shown}]")
        raise ConfigError("\n".join(lines))
    return configs
