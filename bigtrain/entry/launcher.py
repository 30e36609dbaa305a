"""Which launcher started this process, as torch.distributed's environment contract.

torch.distributed (`env://`), DeepSpeed and bigtrain read RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT. The deepspeed launcher and torchrun set them; `srun` sets SLURM_*
and `mpirun` OMPI_COMM_WORLD_* instead, which `detect` translates. Without this, each of N srun
tasks would be a world of one: N silent copies of the run. Anything inconsistent is a
`LaunchError` naming the variables and the fix. Light on purpose: no torch, so it runs first.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Mapping

DEFAULT_PORT = 29500


class LaunchError(ValueError):
    """The launcher's variables do not describe one consistent world; the message names the fix."""


@dataclass(frozen=True)
class Launch:
    launcher: str  # "deepspeed/torchrun", "srun", "mpirun" or "python" (a world of one)
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int

    def environment(self) -> dict[str, str]:
        return {
            "RANK": str(self.rank),
            "WORLD_SIZE": str(self.world_size),
            "LOCAL_RANK": str(self.local_rank),
            "MASTER_ADDR": self.master_addr,
            "MASTER_PORT": str(self.master_port),
        }


def detect(env: Mapping[str, str] = os.environ) -> Launch:
    if "RANK" in env:
        launch = _torch_style(env)
    elif "OMPI_COMM_WORLD_RANK" in env:
        launch = _mpirun(env)
    elif "SLURM_STEP_NUM_TASKS" in env and "SLURM_PROCID" in env:  # inside an srun step
        launch = _srun(env)
    else:
        return Launch("python", 0, 1, int(env.get("LOCAL_RANK", 0) or 0), "127.0.0.1", 0)
    if not 0 <= launch.rank < launch.world_size:
        raise LaunchError(
            f"{launch.launcher} gave rank {launch.rank} in a world of {launch.world_size}: "
            "the launcher's variables are inconsistent; start the job with one launcher"
        )
    tasks = _int(env, "SLURM_STEP_NUM_TASKS", default=1)
    if launch.launcher != "srun" and tasks > launch.world_size:
        raise LaunchError(
            f"srun started {tasks} tasks, but each one's {launch.launcher} reports WORLD_SIZE={launch.world_size}: "
            f"they would train {tasks} separate runs; run one launcher per node with --nnodes "
            "(torchrun) or a hostfile (deepspeed), or srun python directly"
        )
    return launch


def export(launch: Launch, env=os.environ) -> None:
    """Write the torch.distributed variables a launcher did not (python, srun, mpirun). They
    replace any inherited from the shell (a stale LOCAL_RANK=0 would contradict mpirun's local
    rank); MASTER_ADDR/MASTER_PORT set by the user were already read into `launch`."""
    if launch.launcher == "python":
        env.setdefault("LOCAL_RANK", str(launch.local_rank))
        return
    env.update(launch.environment())


def _torch_style(env: Mapping[str, str]) -> Launch:
    missing = [k for k in ("WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in env]
    if missing:
        raise LaunchError(
            f"RANK is set but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not: start bigtrain "
            "with deepspeed, torchrun, srun or mpirun, or unset RANK for a single process"
        )
    return Launch(
        "deepspeed/torchrun",
        _int(env, "RANK"),
        _int(env, "WORLD_SIZE"),
        _int(env, "LOCAL_RANK", default=0),
        env["MASTER_ADDR"],
        _int(env, "MASTER_PORT"),
    )


def _srun(env: Mapping[str, str]) -> Launch:
    nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or ""
    addr = env.get("MASTER_ADDR") or (expand_hostlist(nodes)[0] if nodes else "")
    if not addr:
        raise LaunchError("srun set no SLURM_STEP_NODELIST to find the first node: export MASTER_ADDR=<first node>")
    # Every task of the job computes the same port; MASTER_PORT overrides it.
    port = _int(env, "MASTER_PORT", default=20000 + _int(env, "SLURM_JOB_ID", default=0) % 20000)
    return Launch(
        "srun",
        _int(env, "SLURM_PROCID"),
        _int(env, "SLURM_STEP_NUM_TASKS"),
        _int(env, "SLURM_LOCALID", default=0),
        addr,
        port,
    )


def _mpirun(env: Mapping[str, str]) -> Launch:
    world = _int(env, "OMPI_COMM_WORLD_SIZE")
    one_host = _int(env, "OMPI_COMM_WORLD_LOCAL_SIZE", default=world) == world
    addr = env.get("MASTER_ADDR") or ("127.0.0.1" if one_host else "")
    if not addr:
        raise LaunchError("mpirun across hosts does not say which host is rank 0: pass -x MASTER_ADDR=<rank 0's host>")
    return Launch(
        "mpirun",
        _int(env, "OMPI_COMM_WORLD_RANK"),
        world,
        _int(env, "OMPI_COMM_WORLD_LOCAL_RANK", default=0),
        addr,
        _int(env, "MASTER_PORT", default=DEFAULT_PORT),
    )


def _int(env: Mapping[str, str], key: str, default: int | None = None) -> int:
    value = env.get(key)
    if value is None or value == "":
        if default is None:
            raise LaunchError(f"{key} is not set: the launcher's environment is incomplete")
        return default
    try:
        return int(value)
    except ValueError:
        raise LaunchError(f"{key}={value!r} is not an integer: the launcher's environment is corrupt") from None


def expand_hostlist(hostlist: str) -> list[str]:
    """Slurm's compressed node list, `gpu[01-03,07],login1` → gpu01, gpu02, gpu03, gpu07, login1."""
    hosts = []
    for name, ranges in re.findall(r"([^,\[]+)(?:\[([^\]]*)\])?,?", hostlist):
        if not ranges:
            hosts.append(name)
            continue
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            for i in range(int(lo), int(hi or lo) + 1):
                hosts.append(f"{name}{i:0{len(lo)}d}")
    return hosts
