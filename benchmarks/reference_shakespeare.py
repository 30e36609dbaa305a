"""An independent plain-PyTorch run of nanoGPT's shakespeare_char CPU recipe (no bigtrain code).

    python benchmarks/reference_shakespeare.py ../shared/data/tinyshakespeare.txt 1337 [learned|rope]

Same recipe as experiment=shakespeare_char_cpu: character vocabulary, first 90% train, 4 layers,
4 heads, 128 dim, block 64, batch 12, 2000 iterations, AdamW (0.9, 0.99), weight decay 0.1 on
matrices, lr 1e-3 warmup 100 then cosine to 1e-4, clip 1.0, dropout 0, no biases, tied head;
batches are random windows, as nanoGPT samples them. Positions are learned (nanoGPT's GPT-2
block, the default) or rotary (the bigtrain preset). Prints one JSON line: validation loss over
20 random batches of 12 (nanoGPT's estimate), over the whole split, and the train loss.
"""

import json
import math
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

V_D, HEADS, LAYERS, BLOCK, BATCH, ITERS = 128, 4, 4, 64, 12, 2000


def rotate(x):
    """Rotary positions on (batch, heads, time, head_dim): rotate pairs (i, i + half) by t * 10000^(-2i/d)."""
    t, d = x.shape[2], x.shape[3]
    angle = torch.arange(t, dtype=torch.float32)[:, None] * 10000.0 ** (-torch.arange(0, d, 2) / d)
    cos, sin = angle.cos(), angle.sin()
    a, b = x[..., : d // 2], x[..., d // 2 :]
    return torch.cat((a * cos - b * sin, a * sin + b * cos), dim=-1)


class Block(nn.Module):
    """nanoGPT's block without biases (the recipe's 128 dim and 4 heads unless given; bare_loop.py
    builds other sizes from it)."""

    def __init__(self, rotary: bool, dim: int = V_D, heads: int = HEADS):
        super().__init__()
        self.rotary, self.dim, self.heads = rotary, dim, heads
        self.ln1, self.ln2 = nn.LayerNorm(dim, bias=False), nn.LayerNorm(dim, bias=False)
        self.qkv, self.out = nn.Linear(dim, 3 * dim, bias=False), nn.Linear(dim, dim, bias=False)
        self.up, self.down = nn.Linear(dim, 4 * dim, bias=False), nn.Linear(4 * dim, dim, bias=False)

    def forward(self, x):
        b, t, _ = x.shape
        qkv = self.qkv(self.ln1(x)).split(self.dim, 2)
        q, k, v = (z.view(b, t, self.heads, -1).transpose(1, 2) for z in qkv)
        if self.rotary:
            q, k = rotate(q), rotate(k)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, self.dim)
        x = x + self.out(y)
        return x + self.down(F.gelu(self.up(self.ln2(x))))


class Model(nn.Module):
    def __init__(self, vocab: int, rotary: bool = False):
        super().__init__()
        self.tok = nn.Embedding(vocab, V_D)
        self.pos = None if rotary else nn.Embedding(BLOCK, V_D)
        self.blocks = nn.ModuleList(Block(rotary) for _ in range(LAYERS))
        self.ln = nn.LayerNorm(V_D, bias=False)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, 0.02)
        for blk in self.blocks:
            for w in (blk.out.weight, blk.down.weight):
                nn.init.normal_(w, 0.0, 0.02 / math.sqrt(2 * LAYERS))

    def forward(self, x, y):
        h = self.tok(x) if self.pos is None else self.tok(x) + self.pos.weight[: x.shape[1]]
        for blk in self.blocks:
            h = blk(h)
        logits = F.linear(self.ln(h), self.tok.weight)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def main(path: str, seed: int, rotary: bool) -> None:
    torch.manual_seed(seed)
    text = open(path, encoding="utf-8").read()
    stoi = {c: i for i, c in enumerate(sorted(set(text)))}
    data = torch.tensor([stoi[c] for c in text])
    n = int(0.9 * len(data))
    train, val = data[:n], data[n:]
    model = Model(len(stoi), rotary)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}], lr=1e-3, betas=(0.9, 0.99)
    )

    def batch(split):
        ix = torch.randint(len(split) - BLOCK, (BATCH,))
        return (
            torch.stack([split[i : i + BLOCK] for i in ix]),
            torch.stack([split[i + 1 : i + BLOCK + 1] for i in ix]),
        )

    def lr(it):
        if it < 100:
            return 1e-3 * (it + 1) / 101
        return 1e-4 + 0.5 * (1 + math.cos(math.pi * (it - 100) / (ITERS - 100))) * 9e-4

    start = time.perf_counter()
    for it in range(ITERS):
        for group in opt.param_groups:
            group["lr"] = lr(it)
        loss = model(*batch(train))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        estimate = {
            s: sum(model(*batch(d)).item() for _ in range(20)) / 20 for s, d in (("train", train), ("val", val))
        }
        windows = [(val[i : i + BLOCK], val[i + 1 : i + BLOCK + 1]) for i in range(0, len(val) - BLOCK - 1, BLOCK)]
        full = sum(model(x[None], y[None]).item() for x, y in windows) / len(windows)
    print(
        json.dumps(
            {
                "val_loss_2000": estimate["val"],
                "train_loss_2000": estimate["train"],
                "val_loss_full_split": full,
                "tokens_per_sec": ITERS * BATCH * BLOCK / seconds,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), len(sys.argv) > 3 and sys.argv[3] == "rope")
