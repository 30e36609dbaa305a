"""The MoE step callback: the router losses' gradient scale before a step, and what the routers did
after it, in the step's metrics (metrics.jsonl, the console, TensorBoard and wandb).

Logged per step (means over the step's micro-batches, the data-parallel ranks and the MoE layers):

    moe_aux_loss          the load-balancing loss (1.0 when every expert gets the same share)
    moe_z_loss            the router z-loss
    moe_dropped           the fraction of assignments over an expert's capacity (0 when dropless)
    moe_load_max_mean     the busiest expert's load over the mean load, in the worst layer
    moe_load_max_mean_l<i>  the same for block i
    moe_load              per MoE layer, each expert's fraction of the assignments (a list; jsonl only)
"""

from __future__ import annotations

import torch

from bigtrain.model.moe import moe_layers
from bigtrain.parallel.engine import loss_scale
from bigtrain.parallel.state import Ranks


class MoEStats:
    def __init__(self, engine, ranks: Ranks, n_layers: int, experts: int):
        self.engine, self.ranks = engine, ranks
        self.layers = moe_layers(engine.module)
        self.n_layers, self.experts = n_layers, experts

    def step_start(self, step: int) -> None:
        # DeepSpeed divides each micro-batch's loss by the accumulation steps and, in fp16,
        # multiplies it by the loss scale before backward: the router losses get the same.
        scale = 1.0 / self.ranks.layout.grad_accum
        if self.engine.fp16_enabled():
            scale *= loss_scale(self.engine.optimizer)
        for layer in self.layers:
            layer.grad_scale = scale
            layer.stats.reset()

    def step_end(self, step: int, metrics: dict) -> None:
        metrics.update(self.reduce())

    def reduce(self) -> dict:
        """Every rank's layer statistics summed (one all-reduce over the world: pipeline stages hold
        different layers, data-parallel ranks different tokens), tensor-parallel copies counted once."""
        table = torch.zeros(self.n_layers, 4 + self.experts, dtype=torch.float64)
        for layer in self.layers:
            s = layer.stats
            table[layer.index, :4] = torch.tensor([s.micro_batches, s.aux, s.z, s.dropped], dtype=torch.float64)
            table[layer.index, 4:] = s.load
        layout = self.ranks.layout
        if layout.world_size > 1:
            torch.distributed.all_reduce(table)
            table /= layout.tensor
        out: dict = {}
        rows = [i for i in range(self.n_layers) if table[i, 0] > 0]  # MoE layers that trained
        if not rows:
            return out
        t = table[rows]
        micro = t[:, 0]
        out["moe_aux_loss"] = float((t[:, 1] / micro).mean())
        out["moe_z_loss"] = float((t[:, 2] / micro).mean())
        load = t[:, 4:]
        out["moe_dropped"] = float(t[:, 3].sum() / load.sum())
        ratio = load.max(dim=1).values / load.mean(dim=1)
        out["moe_load_max_mean"] = float(ratio.max())
        for i, r in zip(rows, ratio.tolist()):
            out[f"moe_load_max_mean_l{i}"] = r
        out["moe_load"] = [[round(v, 6) for v in row] for row in (load / load.sum(dim=1, keepdim=True)).tolist()]
        return out
