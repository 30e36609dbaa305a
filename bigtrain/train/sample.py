"""Text sampling in any layout: temperature, top-k and top-p over next-token logits.

Every rank runs the same loop and draws with the same generator, so all ranks agree on each token
without extra communication. Where the logits come from depends on the layout: `last_logits` for
an unpipelined model (any tensor-parallel size, sequence parallel included),
`bigtrain.parallel.pipeline.pipeline_logits` across pipeline stages.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch

from bigtrain.model.gpt import GPT
from bigtrain.model.layers import pad_positions


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """logits (B, V) with everything outside the top-k / nucleus set to -inf."""
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)  # (B, V)
        probs = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        drop = probs - torch.softmax(sorted_logits, dim=-1) >= top_p  # keep the token crossing p
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return logits


def last_logits(model: GPT, sequence_shards: int | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Next-token logits from an unpipelined model: ids (1, t) -> (1, V), the whole vocabulary.

    Sequence parallel splits the positions over tensor-parallel ranks, so the context is padded
    on the right to a multiple of the TP size (`sequence_shards`, the model's own by default);
    causal attention keeps position t-1 unchanged.
    """
    tp = model.tp
    shards = tp.sequence_shards if sequence_shards is None else sequence_shards

    def next_logits(ids: torch.Tensor) -> torch.Tensor:
        t = ids.shape[1]
        padded = pad_positions(ids, shards)  # (1, t')
        return tp.gather_vocab(model(padded)[t - 1].float())  # (1, V) at the last real position

    return next_logits


@contextlib.contextmanager
def evaluating(module: torch.nn.Module):
    """Eval mode (no dropout) for the duration, then the module's previous mode."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


@torch.no_grad()
def generate(
    next_logits: Callable[[torch.Tensor], torch.Tensor],
    prompt: list[int],
    max_new_tokens: int,
    seq_len: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> list[int]:
    """Sample continuation token ids for one prompt; temperature 0 means greedy.

    `next_logits` maps the context (1, t) to the next token's logits (1, V), the same on every
    rank that calls it; each rank then draws with the same generator, so all agree on each token
    without extra communication.
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    ids = torch.tensor([prompt], dtype=torch.long, device=device)  # (1, t)
    for _ in range(max_new_tokens):
        logits = next_logits(ids[:, -seq_len:])  # (1, V)
        if temperature <= 0:
            nxt = logits.argmax(dim=-1, keepdim=True)
        else:
            probs = torch.softmax(filter_logits(logits / temperature, top_k, top_p), dim=-1)
            nxt = torch.multinomial(probs.cpu(), 1, generator=gen).to(device)  # (1, 1)
        ids = torch.cat([ids, nxt], dim=1)
    return ids[0, len(prompt) :].tolist()
