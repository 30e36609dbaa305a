"""A run directory across restarts: one job at a time, and fresh starts that keep the old files.

The directory is `<run.root>/<run.name>`, so relaunching a command finds the same checkpoints and
resumes. Two jobs writing into one directory would corrupt each other's checkpoints, so rank 0
holds an exclusive `flock` on `.bigtrain.lock` for the whole run; the kernel releases it when the
process ends, however it ends, so a crashed or requeued job never leaves a stale lock. The file
names the holder (host, pid, Slurm job) for the error the second job prints.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
import time
from pathlib import Path

LOCK_FILE = ".bigtrain.lock"
# What a fresh start moves aside: everything a previous run of this name wrote, except Hydra's
# record of the new launch (.hydra/, pretrain.log).
PREVIOUS = ("checkpoints", "metrics.jsonl", "summary.json", "tensorboard", "wandb", "wandb_run_id")


class RunDirError(ValueError):
    """The run directory cannot be used now; the message names the fix."""


class RunLock:
    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise RunDirError naming the job that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 4096).decode(errors="replace").strip()
            os.close(fd)
            raise RunDirError(
                f"run directory {self.path.parent} is in use by another job ({_describe(holder)}): wait for it "
                "to finish, or pass another run.name"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(_holder()).encode())
        os.fsync(fd)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None


def _holder() -> dict:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def _describe(holder: str) -> str:
    try:
        h = json.loads(holder)
    except ValueError:
        return "unknown holder"
    job = f"Slurm job {h['slurm_job_id']}, " if h.get("slurm_job_id") else ""
    return f"{job}pid {h.get('pid')} on {h.get('host')}, since {h.get('started')}"


def set_aside(run_dir: Path, ckpt_root: Path) -> Path | None:
    """run.fresh: move what a previous run of this name wrote into `replaced-<time>/`, never
    deleting it. Returns that folder, or None when there was nothing to move."""
    found = [run_dir / name for name in PREVIOUS if (run_dir / name).exists()]
    outside = ckpt_root.exists() and run_dir not in ckpt_root.parents
    if not found and not outside:
        return None
    aside = run_dir / time.strftime("replaced-%Y%m%d-%H%M%S")
    aside.mkdir(parents=True, exist_ok=True)
    for path in found:
        path.rename(aside / path.name)
    if outside:  # trainer.ckpt_dir elsewhere: it moves beside itself
        ckpt_root.rename(ckpt_root.with_name(f"{ckpt_root.name}.{aside.name}"))
    return aside
