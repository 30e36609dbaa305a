"""Text sampling from the (unpipelined) model: temperature, top-k and top-p.

Every tensor-parallel rank runs the same forward and draws with the same generator, so all ranks
agree on each token without extra communication.
"""
from __future__ import annotations

import torch

from bigtrain.parallel.layers import gather_vocab


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


@torch.no_grad()
def generate(model, prompt: list[int], max_new_tokens: int, seq_len: int, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, seed: int = 0) -> list[int]:
    """Sample continuation token ids for one prompt; temperature 0 means greedy."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    ids = torch.tensor([prompt], dtype=torch.long, device=device)  # (1, t)
    for _ in range(max_new_tokens):
        context = ids[:, -seq_len:]
        logits = gather_vocab(model(context)[-1].float())  # (1, V) at the last position
        if temperature <= 0:
            nxt = logits.argmax(dim=-1, keepdim=True)
        else:
            probs = torch.softmax(filter_logits(logits / temperature, top_k, top_p), dim=-1)
            nxt = torch.multinomial(probs.cpu(), 1, generator=gen).to(device)  # (1, 1)
        ids = torch.cat([ids, nxt], dim=1)
    model.train(was_training)
    return ids[0, len(prompt):].tolist()
