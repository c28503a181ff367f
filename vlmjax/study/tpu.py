"""The commands that train a study's runs on a Cloud TPU slice, one after another, with
`launch/tpu_pod.sh train` (every worker trains; status 75 restarts and resumes the run).

The study runs nothing here: a slice runs one job at a time and its storage (a gcsfuse or NFS
mount given as --workdir) is usually not visible from the workstation, so the commands are
printed to be run (or pasted into a script). Each is safe to repeat: a finished run resumes at
its last step and only evaluates again.
"""

import os
import shlex

from vlmjax.study.spec import Run

POD_SCRIPT = os.path.join("launch", "tpu_pod.sh")


def tpu_commands(repo: str, runs: list[tuple[Run, str, str]]) -> list[str]:
    """One `bash launch/tpu_pod.sh train CONFIG RUN_DIR overrides...` line per (run, config path,
    run dir); config paths inside the checkout are made relative to it (the workers' copy)."""
    lines = []
    for run, config_path, run_dir in runs:
        path, sep, arg = config_path.partition(":")
        if os.path.commonpath([repo, os.path.abspath(path)]) == repo:
            path = os.path.relpath(path, repo)
        lines.append(shlex.join(["bash", POD_SCRIPT, "train", path + sep + arg, run_dir,
                                 *run.override_args()]))
    return lines
