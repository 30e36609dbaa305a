"""Routed experts: the MoE layer that replaces a block's MLP where `model.moe` says so.

Per micro-batch, with N tokens, E experts and top-k routing:

    router       logits = x · W_r (fp32 whatever the training precision), probabilities by softmax;
                 each token picks its k most probable experts; with k > 1 the k weights are
                 renormalized to sum to 1 (Mixtral), with k = 1 the probability itself scales the
                 expert's output (Switch), so the router still gets a gradient
    capacity     dropless by default; with model.moe.capacity_factor = c an expert takes at most
                 ceil(c · N · k / E) assignments, all tokens' first choices before any second
                 choice and in token order within a choice (GShard's priority); a dropped
                 assignment adds nothing, and the token passes by on the residual
    experts      each one the dense MLP's shape (model.moe.ffn_hidden wide), built from the same
                 tensor-parallel layers, so tensor parallelism shards every expert as it shards
                 the MLP; every expert runs on every micro-batch, on no tokens if none chose it,
                 so each rank gives every expert parameter a gradient (ZeRO's reduction hooks
                 fire in the same order on every rank)
    shared       model.moe.shared_experts dense experts every token goes through, as one MLP
                 shared_experts · ffn_hidden wide (DeepSeek)

The router's losses, on each micro-batch:

    aux   = E · Σ_e f_e · P_e     f_e: the fraction of assignments expert e got (before capacity),
                                  P_e: its mean router probability; 1 when perfectly balanced
    z     = mean over tokens of logsumexp(logits)²

They reach the gradient without passing through the pipeline or the loss function: the layer's
output carries `aux_loss_coef · aux + z_loss_coef · z` into its backward (`_RouterLossGrad`),
scaled by `grad_scale`, which the MoE step callback (bigtrain/train/moe_stats.py) sets each step
to what DeepSpeed scales the language-model loss by (1 / gradient accumulation steps, times the
fp16 loss scale). The logged `loss` stays the language-model loss; the router's losses and each
layer's expert load are logged beside it.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from bigtrain.config.schema import ModelConfig
from bigtrain.model.layers import TensorParallel


class RouterStats:
    """What one MoE layer saw over the micro-batches of a step (reset by the step callback)."""

    def __init__(self, experts: int):
        self.experts = experts
        self.reset()

    def reset(self) -> None:
        self.micro_batches = 0
        self.aux = 0.0
        self.z = 0.0
        self.load = torch.zeros(self.experts, dtype=torch.float64)  # assignments per expert, before capacity
        self.dropped = 0

    def add(self, aux: torch.Tensor, z: torch.Tensor, load: torch.Tensor, dropped: int) -> None:
        self.micro_batches += 1
        self.aux += float(aux)
        self.z += float(z)
        self.load += load.double()
        self.dropped += dropped


class MoE(nn.Module):
    """tokens (T, B, D) -> (T, B, D): each token through its top-k experts, weighted (module docstring)."""

    def __init__(self, cfg: ModelConfig, tp: TensorParallel, index: int, expert: Callable[[int], nn.Module]):
        super().__init__()
        moe = cfg.moe
        self.index, self.n_experts, self.top_k = index, moe.experts, moe.top_k
        self.capacity_factor = moe.capacity_factor
        self.aux_coef, self.z_coef = moe.aux_loss_coef, moe.z_loss_coef
        # A parameter of this module itself, so that ZeRO-3's hooks would gather it with the module.
        self.router = nn.Parameter(torch.empty(moe.experts, cfg.d_model))
        nn.init.normal_(self.router, std=cfg.init_std)
        self.experts = nn.ModuleList(expert(cfg.expert_ffn_dim) for _ in range(moe.experts))
        self.shared = expert(moe.shared_experts * cfg.expert_ffn_dim) if moe.shared_experts else None
        self.grad_scale = 1.0  # set each step by the MoE callback (module docstring)
        self.stats = RouterStats(moe.experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])  # (N, D)
        n = flat.shape[0]
        logits = F.linear(flat.float(), self.router.float())  # (N, E), fp32
        probs = logits.softmax(dim=-1)
        weights, chosen = probs.topk(self.top_k, dim=-1)  # (N, k)
        if self.top_k > 1:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        load = torch.bincount(chosen.reshape(-1), minlength=self.n_experts)  # (E,)

        # assignments in priority order: all first choices (token order), then all second choices, ...
        expert_of = chosen.t().reshape(-1)  # (k·N,)
        weight_of = weights.t().reshape(-1)
        token_of = torch.arange(n, device=x.device).repeat(self.top_k)
        order = torch.argsort(expert_of, stable=True)  # grouped by expert, priority kept within
        counts = load.tolist()
        capacity = self.capacity(n)
        kept = [min(c, capacity) for c in counts]  # each expert's first ones in priority order
        out = torch.zeros_like(flat)
        start = 0
        for e, expert in enumerate(self.experts):
            picks = order[start : start + kept[e]]
            start += counts[e]
            tokens = token_of[picks]
            y = expert(flat[tokens].unsqueeze(1)).squeeze(1)  # (n_e, D); no tokens: an empty GEMM
            out.index_add_(0, tokens, y * weight_of[picks, None].to(y.dtype))
        if self.shared is not None:
            out = out + self.shared(flat.unsqueeze(1)).squeeze(1)
        if torch.is_grad_enabled():  # a training forward (a checkpointed block: its recompute)
            aux = self.n_experts * (load.float() / (n * self.top_k) * probs.mean(dim=0)).sum()
            z = torch.logsumexp(logits, dim=-1).square().mean()
            self.stats.add(aux.detach(), z.detach(), load, n * self.top_k - sum(kept))
            out = _RouterLossGrad.apply(out, self.aux_coef * aux + self.z_coef * z, self.grad_scale)
        return out.view(shape)

    def capacity(self, tokens: int) -> int:
        """Assignments one expert may take from a micro-batch of `tokens` (all of them when dropless)."""
        if self.capacity_factor is None:
            return tokens * self.top_k
        return math.ceil(self.capacity_factor * tokens * self.top_k / self.n_experts)


class _RouterLossGrad(torch.autograd.Function):
    """Identity on the layer's output; its backward also gives the router's loss the gradient
    `scale`, as if `scale · router_loss` had been added to the loss DeepSpeed backpropagates."""

    @staticmethod
    def forward(ctx, out: torch.Tensor, router_loss: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        ctx.save_for_backward(router_loss)
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (router_loss,) = ctx.saved_tensors
        return grad, torch.full_like(router_loss, ctx.scale), None


def moe_layers(module: nn.Module) -> list[MoE]:
    """The MoE layers of a model (or of a pipeline stage), in block order."""
    return sorted((m for m in module.modules() if isinstance(m, MoE)), key=lambda m: m.index)
