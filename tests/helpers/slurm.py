"""A real one-node Slurm cluster for tests: Debian's slurm-wlm and munge, started in a folder.

`.ci/run` installs the packages (`tests/slurm_install.sh`); where they are missing, or the
daemons cannot start (no root), the Slurm tests skip with the reason.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

CONF = """\
ClusterName=bigtrain-test
SlurmctldHost={host}
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SlurmctldPort={port}
SlurmdPort={port2}
ReturnToService=2
MpiDefault=none
JobRequeue=1
KillWait=2
NodeName={host} CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE
"""


def _run(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, check=check, timeout=60, **kw)


def start_cluster(root: Path) -> dict:
    """Start munged (if needed), slurmctld and slurmd; returns the environment that reaches them."""
    missing = [b for b in ("munged", "slurmctld", "slurmd", "sbatch") if not shutil.which(b)]
    if missing:
        pytest.skip(f"Slurm is not installed ({', '.join(missing)} missing): run tests/slurm_install.sh as root")
    if os.geteuid() != 0:
        pytest.skip("starting slurmctld/slurmd here needs root")
    for sub in ("state", "spool"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    host = socket.gethostname().split(".")[0]
    port = 16817 + os.getpid() % 1000
    conf = root / "slurm.conf"
    conf.write_text(CONF.format(host=host, root=root, cpus=os.cpu_count(), port=port, port2=port + 1))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    if _run("pgrep", "-x", "munged", check=False).returncode != 0:
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        _run("su", "-s", "/bin/sh", "munge", "-c", "munged")
    _run("slurmctld", "-c", env=env)
    _run("slurmd", "-c", env=env)
    for _ in range(100):
        info = _run("sinfo", "-h", "-o", "%T", env=env, check=False)
        if info.stdout.strip() == "idle":
            return env
        time.sleep(0.2)
    raise RuntimeError(f"Slurm did not come up: {info.stdout} {info.stderr}\n{(root / 'slurmctld.log').read_text()}")


def stop_cluster(env: dict) -> None:
    _run("scontrol", "shutdown", env=env, check=False)


FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


def job_info(job: str, env: dict) -> dict:
    """scontrol's fields of a job (JobState, Reason, Restarts, ...); {} when it is unknown."""
    out = _run("scontrol", "show", "job", "-o", job, env=env, check=False).stdout
    return dict(field.split("=", 1) for field in out.split() if "=" in field)


def wait_for(job: str, env: dict, timeout: float, done, log: Path | None = None) -> dict:
    """Poll the job until done(info) holds; fail (and cancel it) after `timeout` seconds, showing
    the end of the job's `log`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        info = job_info(job, env)
        if info and done(info):
            return info
        time.sleep(0.3)
    info = job_info(job, env)
    _run("scancel", job, env=env, check=False)
    tail = log.read_text()[-3000:] if log and log.is_file() else "(no log)"
    pytest.fail(
        f"Slurm job {job}: still {info.get('JobState')} (exit {info.get('ExitCode')}) after {timeout} s\n{tail}"
    )


def wait_finished(job: str, env: dict, timeout: float, log: Path | None = None) -> dict:
    return wait_for(job, env, timeout, lambda info: info.get("JobState") in FINAL, log)
