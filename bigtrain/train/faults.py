"""Fault injection for tests: one step callback (bigtrain/train/callbacks.py), nothing in the model
or the loop.

`BIGTRAIN_FAULT=<where>:<step>` arms a fault (`<where>:*` at any step; several separated by
commas); the entry point (`bigtrain.entry.run.main`) reads it once and adds a `FaultInjector` to
the run's callbacks; without it there is none. Tests drive the real preemption and crash paths
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

from bigtrain.train.callbacks import Callback

ENV = "BIGTRAIN_FAULT"
CRASH_EXIT = 17
POINTS = (
    "after_step",
    "before_publish",
    "kill_mid_step",
    "kill_mid_save",
    "hang_mid_step",
    "nan_loss",
    "spike_loss",
    "slow_exit",
)
ON_LAST_RANK = ("slow_exit", "kill_mid_step", "kill_mid_save", "hang_mid_step", "nan_loss", "spike_loss")


class FaultInjector(Callback):
    def __init__(self, spec: str, rank: int, world_size: int):
        self.armed = {item.strip() for item in spec.split(",") if item.strip()}
        for item in self.armed:
            where, _, step = item.partition(":")
            if where not in POINTS or not (step == "*" or step.isdigit()):
                raise ValueError(
                    f"{ENV}={spec}: {item!r} is not <point>:<step> with a point of bigtrain/train/faults.py"
                )
        self.rank, self.last = rank, world_size - 1

    @classmethod
    def from_env(cls, env=os.environ) -> FaultInjector | None:
        """The faults `BIGTRAIN_FAULT` arms for this rank's run, or None (the production case)."""
        spec = env.get(ENV, "")
        if not spec:
            return None
        return cls(spec, torch.distributed.get_rank(), torch.distributed.get_world_size())

    def _here(self, where: str, step: int) -> bool:
        """Armed at this step, and this is the rank the fault happens on."""
        on = self.last if where in ON_LAST_RANK else 0
        return self.rank == on and (f"{where}:{step}" in self.armed or f"{where}:*" in self.armed)

    def loss(self, step: int, loss: torch.Tensor) -> torch.Tensor:
        if self._here("nan_loss", step):
            return loss * float("nan")
        if self._here("spike_loss", step):
            return loss * 50.0
        return loss

    def before_backward(self, step: int) -> None:
        if self._here("kill_mid_step", step):
            os.kill(os.getpid(), signal.SIGKILL)
        if self._here("hang_mid_step", step):
            os.kill(os.getpid(), signal.SIGSTOP)

    def step_end(self, step: int, metrics: dict) -> None:
        if self._here("after_step", step):
            os.kill(os.getpid(), signal.SIGTERM)

    def save_written(self, step: int) -> None:
        if self._here("kill_mid_save", step):
            os.kill(os.getpid(), signal.SIGKILL)

    def before_publish(self, step: int) -> None:
        if self._here("before_publish", step):
            os._exit(CRASH_EXIT)

    def exit(self, summary: dict) -> None:
        if summary.get("interrupted") and self._here("slow_exit", summary["step"]):
            time.sleep(10)
