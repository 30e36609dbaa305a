"""Fault injection for tests, behind one hook: production code calls `fault_point(where, step)`.

`BIGTRAIN_FAULT=<where>:<step>` arms exactly one fault; without it every call returns at once.
Tests drive the real preemption and crash paths with it, at deterministic points:

    after_step:N      rank 0 sends itself SIGTERM after optimizer step N (preemption: the run saves
                      a checkpoint and exits 75)
    before_publish:N  rank 0 dies (exit 17) after every rank wrote checkpoint N, before it is
                      renamed into place (a crash mid-save: resume must use the previous one)
"""

from __future__ import annotations

import os
import signal

import torch

ENV = "BIGTRAIN_FAULT"
CRASH_EXIT = 17


def fault_point(where: str, step: int) -> None:
    if os.environ.get(ENV) != f"{where}:{step}" or torch.distributed.get_rank() != 0:
        return
    if where == "after_step":
        os.kill(os.getpid(), signal.SIGTERM)
    elif where == "before_publish":
        os._exit(CRASH_EXIT)
    else:
        raise ValueError(f"{ENV}={where}:{step}: unknown fault point (after_step, before_publish)")
