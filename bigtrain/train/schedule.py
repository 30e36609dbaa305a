"""Learning rate: linear warmup, cosine decay to min_lr, then constant (nanoGPT's schedule)."""
from __future__ import annotations

import math

from bigtrain.config.schema import OptimConfig


def lr_at(step: int, cfg: OptimConfig, max_steps: int) -> float:
    """The learning rate used by optimizer step `step` (0-based)."""
    decay_steps = cfg.decay_steps or max_steps
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / (cfg.warmup_steps + 1)
    if step >= decay_steps:
        return cfg.min_lr
    ratio = (step - cfg.warmup_steps) / max(1, decay_steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.lr - cfg.min_lr)
