"""A private one-node SLURM cluster on 127.0.0.1 for the launcher tests (Debian's SLURM 22.05).

`SlurmCluster(directory).start()` installs `slurm-wlm` and `munge` with apt-get when they are
missing (as root, ~15-60 s), then starts a munge daemon on its own socket and key, `slurmctld`
and `slurmd` on free ports, with every state, spool, pid and log file inside `directory` and
`SLURM_CONF` pointing at its own slurm.conf, so nothing in /etc is touched and two clusters
never meet. `env()` is the environment that sbatch/squeue/scontrol need; `stop()` ends the
daemons by the pids in their pid files. No cgroups are needed: proctrack/linuxproc, task/none.
"""

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "squeue", "scontrol", "sinfo", "scancel")


class SlurmUnavailableError(Exception):
    """SLURM cannot run here (no apt-get to install it, not root): the tests skip with this."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _which(name: str) -> str | None:
    return shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None)


def install() -> None:
    """apt-get installs slurm-wlm and munge unless every program is there (SlurmUnavailableError
    when it cannot)."""
    if all(_which(name) for name in DAEMONS + CLIENTS):
        return
    if not shutil.which("apt-get"):
        raise SlurmUnavailableError("SLURM is not installed and apt-get is unavailable to install it "
                          "(apt-get install slurm-wlm munge)")
    if os.geteuid() != 0:
        raise SlurmUnavailableError("SLURM is not installed and installing it (apt-get install slurm-wlm "
                          "munge) needs root; run the tests as root or install it first")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
    done = subprocess.run(["apt-get", "install", "-y", "-qq", "slurm-wlm", "munge"], env=env,
                          capture_output=True, text=True, timeout=900)
    if done.returncode != 0 or not all(_which(name) for name in DAEMONS + CLIENTS):
        raise RuntimeError(f"apt-get install slurm-wlm munge failed:\n{done.stdout[-2000:]}"
                           f"{done.stderr[-2000:]}")


class SlurmCluster:
    """One controller and one compute node (this machine, all its CPUs) on 127.0.0.1."""

    def __init__(self, directory: str, cpus: int | None = None):
        """`cpus`: the CPUs the node offers (default: this machine's); more than it has lets
        jobs share cores (SlurmdParameters=config_overrides accepts the count as given)."""
        self.dir = os.path.abspath(directory)
        self.cpus = cpus or os.cpu_count() or 2
        self.conf = os.path.join(self.dir, "slurm.conf")
        self.node = socket.gethostname().split(".")[0]
        self._pid_files = {name: os.path.join(self.dir, f"{name}.pid") for name in DAEMONS}

    def env(self, base: dict | None = None) -> dict:
        """`base` (default: os.environ) with SLURM_CONF set and no SLURM_* job variables."""
        env = {k: v for k, v in (os.environ if base is None else base).items()
               if not k.startswith("SLURM_")}
        env["SLURM_CONF"] = self.conf
        return env

    def start(self, timeout: float = 60.0) -> "SlurmCluster":
        if os.geteuid() != 0:
            raise SlurmUnavailableError("the test SLURM cluster runs its daemons as root (SlurmUser=root)")
        install()
        os.makedirs(self.dir, exist_ok=True)
        os.chmod(self.dir, 0o755)  # munged checks that no one else can write its directories
        self._start_munge()
        self._write_conf()
        for daemon in ("slurmctld", "slurmd"):
            # -f: this config; both daemonise and write their pid files.
            flags = ["-i"] if daemon == "slurmctld" else []  # -i: ignore any stale state
            subprocess.run([_which(daemon), "-f", self.conf, *flags], env=self.env(), check=True,
                           capture_output=True, timeout=60)
        deadline = time.time() + timeout
        state = ""
        while time.time() < deadline:
            done = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], env=self.env(),
                                  capture_output=True, text=True)
            state = done.stdout.strip()
            if state in ("idle", "mix", "alloc"):
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the test SLURM node did not become idle in {timeout:.0f} s (sinfo: "
                           f"{state!r}); see {self.dir}/slurmctld.log and slurmd.log")

    def _start_munge(self) -> None:
        key = os.path.join(self.dir, "munge.key")
        with open(key, "wb") as f:
            f.write(secrets.token_bytes(1024))
        os.chmod(key, 0o400)
        self.munge_socket = os.path.join(self.dir, "munge.socket")
        subprocess.run([_which("munged"), "--force", f"--socket={self.munge_socket}",
                        f"--key-file={key}", f"--pid-file={self._pid_files['munged']}",
                        f"--log-file={self.dir}/munged.log", f"--seed-file={self.dir}/munged.seed"],
                       check=True, capture_output=True, timeout=60)

    def _write_conf(self) -> None:
        d = self.dir
        for sub in ("state", "spool"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        lines = [
            "ClusterName=vlmjaxtest",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket},cred_expire=5",  # requeued jobs wait this long
            "SlurmUser=root",
            "SlurmdUser=root",
            f"StateSaveLocation={d}/state",
            f"SlurmdSpoolDir={d}/spool",
            f"SlurmctldPidFile={self._pid_files['slurmctld']}",
            f"SlurmdPidFile={self._pid_files['slurmd']}",
            f"SlurmctldLogFile={d}/slurmctld.log",
            f"SlurmdLogFile={d}/slurmd.log",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "SchedulerType=sched/backfill",
            "SchedulerParameters=sched_interval=2,bf_interval=1",  # requeued jobs start soon
            "MpiDefault=none",
            "ReturnToService=2",
            "SlurmdParameters=config_overrides",
            "JobCompType=jobcomp/none",
            "AccountingStorageType=accounting_storage/none",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=30",
            "KillWait=30",
            "MinJobAge=600",
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} State=UNKNOWN",
            "PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES",
        ]
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")

    def stop(self) -> None:
        """Cancels any job left (a failed test's), then SIGTERM to each daemon by its pid file
        (slurmd first) and SIGKILL to what is left."""
        if os.path.exists(self._pid_files["slurmctld"]):
            jobs = self.run("squeue", "-h", "-o", "%i", check=False).stdout.split()
            if jobs:
                self.run("scancel", *jobs, check=False)
                deadline = time.time() + 40
                while time.time() < deadline and self.run("squeue", "-h", check=False).stdout.strip():
                    time.sleep(0.5)
        pids = []
        for name in ("slurmd", "slurmctld", "munged"):
            try:
                with open(self._pid_files[name]) as f:
                    pids.append(int(f.read().strip()))
            except (FileNotFoundError, ValueError):
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(pids[-1], signal.SIGTERM)
        deadline = time.time() + 20
        for pid in pids:
            while time.time() < deadline and os.path.exists(f"/proc/{pid}"):
                time.sleep(0.1)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def run(self, *args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        """A SLURM client command (sbatch, squeue, ...) against this cluster."""
        env = self.env(kwargs.pop("env", None))
        return subprocess.run(list(args), env=env, check=check, capture_output=True, text=True,
                              timeout=kwargs.pop("timeout", 60), **kwargs)

    def job_state(self, job_id: str) -> str:
        """The job's state as scontrol reports it (PENDING, RUNNING, COMPLETED, FAILED...)."""
        out = self.run("scontrol", "-o", "show", "job", job_id, check=False).stdout
        for field in out.split():
            if field.startswith("JobState="):
                return field.partition("=")[2]
        return "UNKNOWN"
