"""Checkpoints through DeepSpeed's engine: model, optimizer, LR schedule and bigtrain's state."""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import torch


class Checkpointer:
    def __init__(self, root: Path, interval: int, keep_last: int, max_steps: int, is_main: bool):
        self.root, self.interval, self.keep_last = Path(root), interval, keep_last
        self.max_steps, self.is_main = max_steps, is_main

    @staticmethod
    def tag(step: int) -> str:
        return f"step_{step:08d}"

    def due(self, step: int) -> bool:
        return step == self.max_steps or (self.interval > 0 and step % self.interval == 0)

    def save(self, engine, state) -> Path:
        tag = self.tag(state.step)
        engine.save_checkpoint(str(self.root), tag=tag, client_state={"bigtrain": dataclasses.asdict(state)})
        torch.distributed.barrier()
        if self.is_main:
            self._prune()
        return self.root / tag

    def _prune(self) -> None:
        tags = sorted(p for p in self.root.glob("step_*") if p.is_dir())
        for old in tags[: max(0, len(tags) - self.keep_last)]:
            shutil.rmtree(old, ignore_errors=True)
