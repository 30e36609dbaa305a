"""A warm pool of gloo ranks for the tests whose subject is training, not the launcher.

A cold `deepspeed launch/pretrain.py` run costs the launcher's start and every rank's imports of
torch, DeepSpeed, megatron-core and Hydra before the first step: most of a short test run on 2
cores. `run(ranks, args)` instead hands the job to `ranks` worker processes started once per
session (tests/helpers/pool_worker.py), which run bigtrain's own entry point with the rank
environment the deepspeed launcher gives, one job after another, and returns what `launch()`
returns: a CompletedProcess with the ranks' stdout and stderr joined in rank order and the first
non-zero exit status. A job that leaves state behind in a worker (a process group, a signal
handler, a thread, patched collectives) fails its test: `bigtrain.entry.run.run` is re-entrant. Tests of
the launchers themselves, of kills and of hung ranks keep the real launchers (tests/e2e/).
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from bigtrain.parallel.state import free_port
from tests.helpers.launch import PYTHON, ROOT

_POOLS: dict[int, _Pool] = {}
GRACE_S = 30  # how long the other ranks of a failed job may take to end before they are killed


class _Pool:
    def __init__(self, world: int):
        self.world = world
        self.logs = Path(tempfile.mkdtemp(prefix=f"bigtrain-pool{world}-"))
        self.workers = []
        for rank in range(world):
            env = {
                **os.environ,
                "PYTHONUNBUFFERED": "1",
                "RANK": str(rank),
                "LOCAL_RANK": str(rank),
                "WORLD_SIZE": str(world),
                "LOCAL_SIZE": str(world),
                "MASTER_ADDR": "127.0.0.1",
            }
            self.workers.append(
                subprocess.Popen(
                    [PYTHON, "-m", "tests.helpers.pool_worker"],
                    cwd=ROOT,
                    env=env,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=open(self.logs / f"worker{rank}.log", "w"),
                    text=True,
                    preexec_fn=_die_with_parent,
                )
            )
        self.ready = False
        self.jobs = 0

    def _replies(self, timeout: float) -> dict[int, dict]:
        """One JSON line from each worker, by rank; fewer when one died, `timeout` passed, or the
        others did not end within GRACE_S of a rank that failed (as the launcher ends them)."""
        replies, deadline = {}, time.monotonic() + timeout
        while len(replies) < self.world:
            waiting = {w.stdout.fileno(): r for r, w in enumerate(self.workers) if r not in replies}
            readable, _, _ = select.select(list(waiting), [], [], max(0.0, deadline - time.monotonic()))
            if not readable:
                return replies
            for fd in readable:
                line = self.workers[waiting[fd]].stdout.readline()
                if not line:
                    return replies
                replies[waiting[fd]] = json.loads(line)
                if replies[waiting[fd]].get("returncode"):
                    deadline = min(deadline, time.monotonic() + GRACE_S)
        return replies

    def run(self, args: list[str], env: dict | None, timeout: float, fp16_on_cpu: bool) -> subprocess.CompletedProcess:
        if not self.ready:
            if len(self._replies(300)) < self.world:
                self.close()
                pytest.fail(f"the {self.world}-rank pool did not start: {self._worker_logs()}")
            self.ready = True
        self.jobs += 1
        out = self.logs / f"job{self.jobs}"
        job = {
            "args": [str(a) for a in args],
            "env": {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            "port": free_port(),
            "fp16_on_cpu": fp16_on_cpu,
        }
        for rank, worker in enumerate(self.workers):
            worker.stdin.write(json.dumps({**job, "out": f"{out}.rank{rank}"}) + "\n")
            worker.stdin.flush()
        replies = self._replies(timeout)
        stdout, stderr = (self._joined(out, stream) for stream in ("stdout", "stderr"))
        codes = [replies[r]["returncode"] for r in sorted(replies)]
        if len(replies) < self.world:
            self.close()  # a rank still running or dead: start afresh for the next job
            if not any(codes):
                pytest.fail(f"{args} on {self.world} pool ranks: no answer in {timeout}s:\n{stdout[-3000:]}")
        left = {rank: r["left"] for rank, r in replies.items() if r["left"]}
        if left:
            self.close()
            pytest.fail(f"{args} left state behind in its pool workers (before, after): {left}\n{stderr[-3000:]}")
        code = next((c for c in codes if c), 0)
        return subprocess.CompletedProcess(["pool", str(self.world), *args], code, stdout, stderr)

    def _joined(self, out: Path, stream: str) -> str:
        parts = [Path(f"{out}.rank{rank}.{stream}") for rank in range(self.world)]
        return "".join(p.read_text(errors="replace") for p in parts if p.is_file())

    def _worker_logs(self) -> str:
        return "\n".join((self.logs / f"worker{r}.log").read_text()[-2000:] for r in range(self.world))

    def close(self) -> None:
        for worker in self.workers:
            worker.kill()
            worker.wait()
            worker.stdin.close()
            worker.stdout.close()
        _POOLS.pop(self.world, None)


def _die_with_parent() -> None:
    """A worker gets SIGKILL when the test session's process ends, however it ends (Linux's
    PR_SET_PDEATHSIG): a killed session leaves no worker waiting in a collective."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    except OSError:  # not Linux: close_all() at the session's end still ends them
        pass


def run(ranks: int, args: list[str], timeout: float = 600, env: dict | None = None, fp16_on_cpu: bool = False):
    """`deepspeed --num_gpus <ranks> launch/pretrain.py <args>`, on the warm workers (see the module
    docstring). `fp16_on_cpu`: DeepSpeed's CPU accelerator claims fp16 (tests/helpers/fp16_on_cpu.py)."""
    if ranks not in _POOLS:
        _POOLS[ranks] = _Pool(ranks)
    return _POOLS[ranks].run(args, env, timeout, fp16_on_cpu)


def close_all() -> None:
    for pool in list(_POOLS.values()):
        pool.close()
