"""Fault injection for tests, behind one hook: production code calls `fault_point(where, step)`.

`BIGTRAIN_FAULT=<where>:<step>` arms exactly one fault (`<where>:*` at any step); without it every
call returns at once. Tests drive the real preemption and crash paths with it, at deterministic
points:

    after_step:N      rank 0 sends itself SIGTERM after optimizer step N (preemption: the run saves
                      a checkpoint and exits 75)
    before_publish:N  rank 0 dies (exit 17) after every rank wrote checkpoint N, before it is
                      renamed into place (a crash mid-save: resume must use the previous one)
    kill_mid_step:N   the last rank SIGKILLs itself in step N, after a forward pass and before its
                      gradients are reduced (a dead rank: the others must stop, naming it)
    kill_mid_save:N   the last rank SIGKILLs itself while checkpoint N is being written
    slow_exit:N       after a signal stopped the run at step N and its checkpoint is saved, the
                      last rank lingers 10 s before exiting (srun --kill-on-bad-exit then kills it
                      once rank 0 has exited 75, if Slurm's KillWait is shorter, and reports the
                      kill instead of 75)
"""

from __future__ import annotations

import os
import signal
import time

import torch

ENV = "BIGTRAIN_FAULT"
CRASH_EXIT = 17


def fault_point(where: str, step: int) -> None:
    if os.environ.get(ENV) not in (f"{where}:{step}", f"{where}:*"):
        return
    last = torch.distributed.get_world_size() - 1
    on_last = where in ("slow_exit", "kill_mid_step", "kill_mid_save")
    if torch.distributed.get_rank() != (last if on_last else 0):
        return
    if where == "slow_exit":
        time.sleep(10)
    elif where in ("kill_mid_step", "kill_mid_save"):
        os.kill(os.getpid(), signal.SIGKILL)
    elif where == "after_step":
        os.kill(os.getpid(), signal.SIGTERM)
    elif where == "before_publish":
        os._exit(CRASH_EXIT)
    else:
        raise ValueError(f"{ENV}={where}:{step}: unknown fault point (see bigtrain/faults.py)")
