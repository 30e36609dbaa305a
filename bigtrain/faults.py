"""Fault injection for tests, behind one hook: production code calls `fault_point(where, step)`.

`BIGTRAIN_FAULT=<where>:<step>` arms a fault (`<where>:*` at any step; several separated by
commas); without it every call returns at once. Tests drive the real preemption and crash paths
with it, at deterministic points:

    after_step:N      rank 0 sends itself SIGTERM after optimizer step N (preemption: the run saves
                      a checkpoint and exits 75)
    before_publish:N  rank 0 dies (exit 17) after every rank wrote checkpoint N, before it is
                      renamed into place (a crash mid-save: resume must use the previous one)
    kill_mid_step:N   the last rank SIGKILLs itself in step N, after a forward pass and before its
                      gradients are reduced (a dead rank: the others must stop, naming it)
    kill_mid_save:N   the last rank SIGKILLs itself while checkpoint N is being written
    hang_mid_step:N   the last rank stops itself (SIGSTOP) in step N, where kill_mid_step kills:
                      a hung rank, which only the collective timeout can detect
    nan_loss:N        the last rank's training loss in step N is NaN (so are its gradients)
    spike_loss:N      the last rank's training loss in step N is 50 times too large
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


TRAIN_STEP: list[int | None] = [None]  # the optimizer step being trained (1-based), set by the loop


def _armed(where: str, step: int | None) -> bool:
    faults = os.environ.get(ENV, "").split(",")
    return step is not None and (f"{where}:{step}" in faults or f"{where}:*" in faults)


def loss_fault(loss: torch.Tensor) -> torch.Tensor:
    """nan_loss / spike_loss: the training loss of the armed step, on the last rank."""
    step = TRAIN_STEP[0]
    if step is None or not os.environ.get(ENV):
        return loss
    if torch.distributed.get_rank() != torch.distributed.get_world_size() - 1:
        return loss
    if _armed("nan_loss", step):
        return loss * float("nan")
    if _armed("spike_loss", step):
        return loss * 50.0
    return loss


def fault_point(where: str, step: int) -> None:
    if not _armed(where, step):
        return
    last = torch.distributed.get_world_size() - 1
    on_last = where in ("slow_exit", "kill_mid_step", "kill_mid_save", "hang_mid_step")
    if torch.distributed.get_rank() != (last if on_last else 0):
        return
    if where == "slow_exit":
        time.sleep(10)
    elif where in ("kill_mid_step", "kill_mid_save"):
        os.kill(os.getpid(), signal.SIGKILL)
    elif where == "hang_mid_step":
        os.kill(os.getpid(), signal.SIGSTOP)
    elif where == "after_step":
        os.kill(os.getpid(), signal.SIGTERM)
    elif where == "before_publish":
        os._exit(CRASH_EXIT)
    else:
        raise ValueError(f"{ENV}={where}:{step}: unknown fault point (see bigtrain/faults.py)")
