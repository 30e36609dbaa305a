"""The bare baseline: an eager PyTorch training loop written the way nanoGPT's train.py is (no
bigtrain code; the block is reference_shakespeare.py's), for the same decoder bigtrain trains.

    python benchmarks/bare_loop.py --data ../shared/data/tinyshakespeare.txt --layers 4 --heads 4 \
        --dim 128 --block 64 --batch 12 --position rope --steps 200

Pre-LayerNorm blocks without biases, GELU MLP, causal SDPA, tied head; character vocabulary;
random training windows; AdamW (torch's default implementation unless --fused) with clipping at
1.0. --dtype bf16 runs the step under torch.autocast, as nanoGPT does; --compile compiles the
whole model. Prints one JSON line: the median step time and tokens/s over the steps after
--warmup, and the last loss.
"""

from __future__ import annotations

import argparse
import json
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--block", type=int, default=64)
    parser.add_argument("--batch", type=int, default=12)
    parser.add_argument("--position", choices=["learned", "rope"], default="rope")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--fused", action="store_true")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args()
    if args.steps <= args.warmup:
        parser.error(f"--steps {args.steps} leaves no step after --warmup {args.warmup}: raise --steps")
    step = bare_step(
        args.data,
        args.layers,
        args.heads,
        args.dim,
        args.block,
        args.batch,
        args.position,
        args.dtype,
        args.compile,
        args.fused,
    )
    times, loss = [], None
    for _ in range(args.steps):
        start = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - start)
    median = statistics.median(times[args.warmup :])
    print(
        json.dumps(
            {
                "step_time": median,
                "tokens_per_sec": args.batch * args.block / median,
                "loss": loss.item(),
                "params": step.params,
                "threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
