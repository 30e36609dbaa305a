"""The GPT decoder, read top to bottom: positions, attention, MLP, block, embedding, head, model.

Activations are sequence-first, (T, B, D), as megatron-core's tensor-parallel layers expect; under
sequence parallel the T between blocks is this rank's T/tp slice. Projections come from
`bigtrain.model.layers.TensorParallel`, so the same classes serve 1 rank or T tensor-parallel
ranks; the model reads no process-group state, so `GPT(cfg)` builds and runs on one process.
The model is a flat list of layers (embedding, blocks, final norm, head) so that DeepSpeed
pipeline stages can cut it anywhere; `GPT` chains the same layers in one process.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bigtrain.config.schema import ModelConfig
from bigtrain.model.layers import TensorParallel, Vocab, checkpoint
from bigtrain.model.moe import MoE


def sinusoidal_table(seq_len: int, d: int) -> torch.Tensor:
    pos = torch.arange(seq_len, dtype=torch.float32)[:, None]  # (T, 1)
    inv = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))  # (D/2,)
    table = torch.zeros(seq_len, d)
    table[:, 0::2] = torch.sin(pos * inv)
    table[:, 1::2] = torch.cos(pos * inv)
    return table  # (T, D)


def rope_tables(seq_len: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # (hd/2,)
    freqs = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv)  # (T, hd/2)
    angles = torch.cat([freqs, freqs], dim=-1)  # (T, hd): the rotate-half layout Hugging Face uses
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, T, hd); cos, sin: (T, hd)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)  # (B, H, T, hd)
    return (x * cos + rotated * sin).to(x.dtype)


class Attention(nn.Module):
    """Causal self-attention with grouped-query heads, through torch SDPA.

    One column-parallel projection makes q, k and v, laid out per kv group as
    [q_1 .. q_g, k, v] × head_dim, so a tensor-parallel shard holds whole groups.
    """

    def __init__(self, cfg: ModelConfig, tp: TensorParallel):
        super().__init__()
        self.head_dim, self.group = cfg.head_dim, cfg.n_heads // cfg.kv_heads
        self.kv_local = cfg.kv_heads // tp.size
        self.tp = tp
        self.dropout = cfg.dropout
        residual_std = cfg.init_std / math.sqrt(2 * cfg.n_layers)  # GPT-2's scaled residual init
        self.qkv = tp.column(cfg.d_model, cfg.kv_heads * (self.group + 2) * cfg.head_dim, cfg.bias, cfg.init_std)
        self.proj = tp.row(cfg.n_heads * cfg.head_dim, cfg.d_model, cfg.bias, residual_std)
        self.rope = cfg.position == "rope"
        if self.rope:
            cos, sin = rope_tables(cfg.seq_len, cfg.head_dim, cfg.rope_theta)
            self.register_buffer("cos", cos, persistent=False)
            self.register_buffer("sin", sin, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x)  # (T, B, kv_local * (g + 2) * hd), T whole even under sequence parallel
        T, B = qkv.shape[:2]
        qkv = qkv.view(T, B, self.kv_local, self.group + 2, self.head_dim)  # (T, B, KV, g+2, hd)
        # split, not indexing: its backward is one concatenation instead of a zeroed copy per piece
        q, k, v = qkv.split([self.group, 1, 1], dim=3)
        q = q.reshape(T, B, -1, self.head_dim)  # (T, B, H, hd)
        k, v = k.squeeze(3), v.squeeze(3)  # (T, B, KV, hd)
        q, k, v = (t.permute(1, 2, 0, 3) for t in (q, k, v))  # (B, H|KV, T, hd)
        if self.rope:
            q, k = apply_rope(q, self.cos[:T], self.sin[:T]), apply_rope(k, self.cos[:T], self.sin[:T])
        p = self.dropout if self.training else 0.0
        # Each tensor-parallel rank holds different heads, so it draws its own dropout masks.
        with self.tp.sharded_dropout():
            y = F.scaled_dot_product_attention(
                q, k, v, dropout_p=p, is_causal=True, enable_gqa=self.group > 1
            )  # (B, H, T, hd)
        y = y.permute(2, 0, 1, 3).reshape(T, B, -1)  # (T, B, H * hd)
        return self.proj(y)  # (T, B, D), or (T/tp, B, D) under sequence parallel


class MLP(nn.Module):
    """The dense feed-forward layer; `ffn` overrides its hidden size (an expert's, in bigtrain/model/moe.py)."""

    def __init__(self, cfg: ModelConfig, tp: TensorParallel, ffn: int | None = None):
        super().__init__()
        ffn = ffn or cfg.ffn_dim
        residual_std = cfg.init_std / math.sqrt(2 * cfg.n_layers)
        self.swiglu = cfg.activation == "swiglu"
        self.up = tp.column(cfg.d_model, ffn, cfg.bias, cfg.init_std)
        if self.swiglu:
            self.gate = tp.column(cfg.d_model, ffn, cfg.bias, cfg.init_std)
        self.down = tp.row(ffn, cfg.d_model, cfg.bias, residual_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.swiglu:
            h = F.silu(self.gate(x)) * self.up(x)  # (T, B, F/tp)
        else:
            h = F.gelu(self.up(x))  # (T, B, F/tp)
        return self.down(h)  # (T, B, D)


class ResidualDropout(nn.Module):
    def __init__(self, p: float, tp: TensorParallel):
        super().__init__()
        self.p, self.tp = p, tp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.tp.sequence_parallel:  # ranks hold different positions: different masks
            with self.tp.sharded_dropout():
                return F.dropout(x, self.p, True)
        return F.dropout(x, self.p, True)  # replicated activations: the same mask on every rank


class Block(nn.Module):
    """One decoder layer; block `index` has routed experts in place of its MLP where model.moe says so."""

    def __init__(self, cfg: ModelConfig, tp: TensorParallel, index: int = 0):
        super().__init__()
        self.norm1 = tp.norm(cfg.norm, cfg.d_model, cfg.norm_eps, cfg.bias)
        self.attn = Attention(cfg, tp)
        self.norm2 = tp.norm(cfg.norm, cfg.d_model, cfg.norm_eps, cfg.bias)
        self.mlp = MoE(cfg, tp, index, lambda ffn: MLP(cfg, tp, ffn)) if cfg.moe.is_moe_layer(index) else MLP(cfg, tp)
        self.drop = ResidualDropout(cfg.dropout, tp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x)))  # (T, B, D)
        return x + self.drop(self.mlp(self.norm2(x)))  # (T, B, D)


class Embedding(nn.Module):
    """Token (+ learned or sinusoidal position) embedding; also the tied LM head.

    `positions=False` builds the copy a last pipeline stage holds only for the tied head.
    """

    def __init__(self, cfg: ModelConfig, tp: TensorParallel, vocab: Vocab, positions: bool = True):
        super().__init__()
        self.tp = tp
        self.word = tp.embedding(vocab.padded, cfg.d_model, cfg.init_std)
        self.position = cfg.position if positions else "none"
        if cfg.position == "learned":
            self.pos = nn.Embedding(cfg.seq_len, cfg.d_model)
            nn.init.normal_(self.pos.weight, std=cfg.init_std)
        elif cfg.position == "sinusoidal":
            self.register_buffer("pos_table", sinusoidal_table(cfg.seq_len, cfg.d_model), persistent=False)
        self.drop = ResidualDropout(cfg.dropout, tp)
        if cfg.tie_embeddings:
            self.head = tp.tied_head(cfg.d_model, vocab.padded)
            self.register_buffer("pad_mask", tp.vocab_pad_mask(vocab), persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        T = tokens.shape[1]
        x = self.word(tokens).transpose(0, 1).contiguous()  # (B, T) -> (T, B, D)
        if self.position == "learned":
            x = x + self.pos.weight[:T, None, :]  # (T, 1, D) broadcast over batch
        elif self.position == "sinusoidal":
            x = x + self.pos_table[:T, None, :].to(x.dtype)
        if self.tp.sequence_parallel:
            x = self.tp.scatter_sequence(x)  # (T/tp, B, D)
        return self.drop(x)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Tied LM head: (T, B, D) -> (T, B, V/tp)."""
        return self.head(h, weight=self.word.weight).masked_fill(self.pad_mask, float("-inf"))


class FinalNorm(nn.Module):
    def __init__(self, cfg: ModelConfig, tp: TensorParallel):
        super().__init__()
        self.norm = tp.norm(cfg.norm, cfg.d_model, cfg.norm_eps, cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


class LMHead(nn.Module):
    """Untied LM head: (T, B, D) -> (T, B, V/tp); padded vocabulary entries get -inf."""

    def __init__(self, cfg: ModelConfig, tp: TensorParallel, vocab: Vocab):
        super().__init__()
        self.proj = tp.column(cfg.d_model, vocab.padded, False, cfg.init_std)
        self.register_buffer("pad_mask", tp.vocab_pad_mask(vocab), persistent=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.proj(h).masked_fill(self.pad_mask, float("-inf"))


def seed_layer(seed: int) -> None:
    """Each layer is initialized from its own seed, so pipeline stages build the same weights."""
    torch.manual_seed(seed)


class GPT(nn.Module):
    """The decoder in one process (per tensor-parallel rank): tokens (B, T) -> logits (T, B, V/tp).

    Layer i is built after `seed_layer(seed + i)`: 0 embedding, 1..L blocks, L+1 final norm,
    L+2 untied head, the same numbering the pipeline uses. `tp` defaults to one process and
    `vocab` to model.vocab_size padded for it.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        tp: TensorParallel = TensorParallel(),
        vocab: Vocab | None = None,
        seed: int = 0,
        checkpoint_activations: bool = False,
    ):
        super().__init__()
        if vocab is None:
            if cfg.vocab_size is None:
                raise ValueError("GPT needs a vocabulary: pass vocab=Vocab.of(...) or set model.vocab_size")
            vocab = Vocab.of(cfg.vocab_size, cfg.pad_vocab_multiple, tp.size)
        self.tp, self.vocab = tp, vocab
        self.checkpoint_activations = checkpoint_activations
        seed_layer(seed)
        self.embed = Embedding(cfg, tp, vocab)
        self.blocks = nn.ModuleList()
        for i in range(cfg.n_layers):
            seed_layer(seed + 1 + i)
            self.blocks.append(Block(cfg, tp, i))
        seed_layer(seed + cfg.n_layers + 1)
        self.final_norm = FinalNorm(cfg, tp)
        seed_layer(seed + cfg.n_layers + 2)
        self.head = None if cfg.tie_embeddings else LMHead(cfg, tp, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)  # (T, B, D)
        for block in self.blocks:
            x = checkpoint(block, x) if self.checkpoint_activations and self.training else block(x)
        h = self.final_norm(x)
        return self.embed.logits(h) if self.head is None else self.head(h)  # (T, B, V/tp)


def lm_loss(
    logits: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor, tp: TensorParallel = TensorParallel()
) -> torch.Tensor:
    """Mean next-token loss. logits (T, B, V/tp) sequence-first; labels, loss_mask (B, T)."""
    per_token = tp.cross_entropy(logits.float(), labels.t().contiguous())  # (T, B)
    mask = loss_mask.t().to(per_token.dtype)
    return (per_token * mask).sum() / mask.sum().clamp(min=1.0)
