"""Non-finite gradients: the update of a step that has them is skipped on every rank.

`NonFiniteGuard` runs as a step pre-hook of the optimizer DeepSpeed steps (the client optimizer,
also inside ZeRO and bf16 wrappers, which hand it the fp32 master gradients): if any gradient on
any rank holds a NaN or Inf (on the plain path: if bigtrain's clipper measured a non-finite
global norm), every rank drops its gradients, so the optimizer leaves weights and
moments as they were. Ranks agree with one all-reduce, so pipeline stages, tensor-parallel and
data-parallel ranks skip the same step. fp16 runs never reach it on an overflow: DeepSpeed's loss
scaler skips those steps first.
"""

from __future__ import annotations

import math

import torch

from bigtrain.parallel.clipping import GradClipper


class NonFiniteGuard:
    def __init__(self, device: torch.device, clipper: GradClipper | None = None):
        self.device = device
        # On the plain path bigtrain's clipper (the hook before this one) has just measured the
        # whole model's gradient norm, the same on every rank: no second pass, no second reduction.
        self.clipper = clipper
        self.skipped = False  # the last optimizer step was skipped

    def step_start(self, step: int) -> None:
        """A step callback (bigtrain/train/callbacks.py): a new step has skipped nothing yet."""
        self.skipped = False

    def __call__(self, optimizer: torch.optim.Optimizer, args, kwargs) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if self.clipper is not None:
            self.skipped = self.clipper.last_norm is not None and not math.isfinite(self.clipper.last_norm)
        else:
            self.skipped = self._any_non_finite(params)
        if self.skipped:
            for p in params:
                p.grad = None  # torch's optimizers step only parameters that have a gradient

    def _any_non_finite(self, params: list[torch.Tensor]) -> bool:
        """Whether any rank holds a NaN/Inf gradient (one all-reduce)."""
        bad = torch.zeros(1, device=self.device)
        if params:
            norms = torch._foreach_norm([p.grad.detach().float() for p in params])
            bad = (~torch.isfinite(torch.stack(norms))).any().float().reshape(1)
        if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
        return bool(bad.item())
