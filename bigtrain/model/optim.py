"""The optimizer and its learning-rate schedule: AdamW with decay groups, linear warmup, cosine
decay to min_lr, then constant (nanoGPT's schedule). With the model it sets up, below
`bigtrain.parallel`, which hands both to DeepSpeed."""

from __future__ import annotations

import math

import torch
from megatron.core.tensor_parallel import VocabParallelEmbedding
from torch import nn

from bigtrain.config.schema import OptimConfig
from bigtrain.model.layers import Norm


def lr_at(step: int, cfg: OptimConfig, max_steps: int) -> float:
    """The learning rate used by optimizer step `step` (0-based)."""
    decay_steps = cfg.decay_steps or max_steps
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / (cfg.warmup_steps + 1)
    if step >= decay_steps:
        return cfg.min_lr
    ratio = (step - cfg.warmup_steps) / max(1, decay_steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.lr - cfg.min_lr)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on biases, norms and embeddings."""
    no_decay_modules = (Norm, nn.Embedding, VocabParallelEmbedding)
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            if isinstance(module, no_decay_modules) or name == "bias" or param.ndim < 2:
                no_decay.append(param)
            else:
                decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


IMPLEMENTATIONS = {  # optim.implementation -> torch AdamW's keyword
    "auto": {"fused": True},
    "fused": {"fused": True},
    "foreach": {"foreach": True},
    "for_loop": {"foreach": False},
}


def build_optimizer(model: nn.Module, cfg: OptimConfig, max_steps: int):
    """(torch AdamW, LambdaLR following `lr_at`) for `model`'s parameters on this rank."""
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.weight_decay),
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        **IMPLEMENTATIONS[cfg.implementation],
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_at(step, cfg, max_steps) / cfg.lr)
    return optimizer, schedule
