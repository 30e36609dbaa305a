"""Generation behind `bigtrain-generate`: from any layout's checkpoint (its consolidated, unsharded
copy), on one process with no process group."""

from __future__ import annotations

from pathlib import Path

import torch

from bigtrain.train.checkpoint import load_checkpoint_model
from bigtrain.train.sample import generate, last_logits


@torch.no_grad()
def generate_text(
    path: str | Path, prompt: str, max_tokens: int, temperature: float, top_k: int, top_p: float, seed: int
) -> str:
    model, tokenizer, meta = load_checkpoint_model(path)
    ids = tokenizer.encode(prompt) if prompt else [tokenizer.eod]
    out = generate(last_logits(model), ids, max_tokens, meta["model"]["seq_len"], temperature, top_k, top_p, seed)
    return prompt + tokenizer.decode(out)
