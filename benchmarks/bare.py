"""The bare baseline the benchmarks compare bigtrain with: an eager PyTorch training loop written
the way nanoGPT's train.py is (no bigtrain code; the block is reference_shakespeare.py's), for the
same decoder bigtrain trains. A library: `tax.py` runs it between bigtrain's steps, `layouts.py`
once per model.

Pre-LayerNorm blocks without biases, GELU MLP, causal SDPA, tied head; character vocabulary;
random training windows; AdamW (torch's default implementation unless fused=True) with clipping at
1.0. dtype="bf16" runs the step under torch.autocast, as nanoGPT does; compile=True compiles the
whole model.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F
from reference_shakespeare import Block  # beside this file: the recipe's block, at any size
from torch import nn


class GPT(nn.Module):
    def __init__(self, vocab: int, layers: int, heads: int, dim: int, block: int, rope: bool):
        super().__init__()
        self.wte = nn.Embedding(vocab, dim)
        self.wpe = None if rope else nn.Embedding(block, dim)
        self.blocks = nn.ModuleList(Block(rope, dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim, bias=False)
        self.apply(lambda m: nn.init.normal_(m.weight, std=0.02) if isinstance(m, (nn.Linear, nn.Embedding)) else None)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.wte(x)
        if self.wpe is not None:
            h = h + self.wpe.weight[: x.shape[1]]
        for block in self.blocks:
            h = block(h)
        logits = self.ln_f(h) @ self.wte.weight.t()
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), y.view(-1))


def bare_step(
    data_path: str,
    layers: int,
    heads: int,
    dim: int,
    block: int,
    batch: int,
    position: str,
    dtype: str = "fp32",
    compile: bool = False,
    fused: bool = False,
):
    """The loop's body as a function: each call samples a batch, runs one training step and returns
    the loss (a tensor). `benchmarks/tax.py` calls it between bigtrain's steps in one process."""
    torch.manual_seed(1337)
    text = open(data_path, encoding="utf-8").read()
    chars = sorted(set(text))
    lookup = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([lookup[c] for c in text[: len(text) * 9 // 10]], dtype=torch.long)
    model = GPT(len(chars), layers, heads, dim, block, position == "rope")
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.99), fused=True if fused else None)
    step_fn = torch.compile(model) if compile else model
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16")

    def step() -> torch.Tensor:
        ix = torch.randint(len(data) - block - 1, (batch,))
        x = torch.stack([data[i : i + block] for i in ix])
        y = torch.stack([data[i + 1 : i + 1 + block] for i in ix])
        with autocast:
            loss = step_fn(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    step.params = sum(p.numel() for p in model.parameters())
    return step


def measure(data_path: str, shape: dict, dtype: str = "fp32", steps: int = 200, warmup: int = 20) -> dict:
    """Train `shape` (layers, heads, dim, block, batch, position) for `steps` in this process: the
    median step time and tokens/s after `warmup`, and the last loss."""
    if steps <= warmup:
        raise ValueError(f"steps={steps} leaves no step after warmup={warmup}: raise steps")
    keys = ("layers", "heads", "dim", "block", "batch", "position")
    step = bare_step(data_path, **{k: shape[k] for k in keys}, dtype=dtype)
    times, loss = [], None
    for _ in range(steps):
        start = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - start)
    median = statistics.median(times[warmup:])
    return {
        "step_time": median,
        "tokens_per_sec": shape["batch"] * shape["block"] / median,
        "loss": loss.item(),
        "params": step.params,
        "threads": torch.get_num_threads(),
    }


def shape_overrides(shape: dict) -> list[str]:
    """bigtrain's overrides for a bare-loop shape (layers, heads, dim, block, position)."""
    return [
        f"model.n_layers={shape['layers']}",
        f"model.n_heads={shape['heads']}",
        f"model.d_model={shape['dim']}",
        f"model.seq_len={shape['block']}",
        f"model.position={shape['position']}",
    ]
