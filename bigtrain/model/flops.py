"""Model FLOPs: the count MFU is measured against.

Per token, a forward pass costs 2 FLOPs (multiply + add) for every weight it multiplies, plus the
attention scores and weighted sum. With d = d_model, a = n_heads·head_dim (query width),
c = n_kv_heads·head_dim (key/value width), f = ffn hidden size, V = vocabulary, T = sequence:

    per layer   2·(d·a + 2·d·c + a·d)           q, k, v, output projections
              + 2·(2 or 3)·d·f                  MLP: up + down (GELU) or gate + up + down (SwiGLU)
              + 2·2·T·a                         QKᵀ and attention·V, counted over the full T×T
                                                square as Megatron and PaLM do (no causal halving)
    head        2·d·V

Training is 3× the forward (backward costs twice the forward). Activation recomputation is not
counted: MFU measures useful model work, so checkpointing lowers it, as it should.
Embedding lookups, norms, activations and softmax are ignored (under 1% at GPT-2 scale).
"""

from __future__ import annotations

from bigtrain.config.schema import ModelConfig


def forward_flops_per_token(cfg: ModelConfig, vocab: int) -> int:
    d, hd = cfg.d_model, cfg.head_dim
    a, c, f = cfg.n_heads * hd, cfg.kv_heads * hd, cfg.ffn_dim
    mlp_mats = 3 if cfg.activation == "swiglu" else 2
    per_layer = 2 * (d * a + 2 * d * c + a * d) + 2 * mlp_mats * d * f + 2 * 2 * cfg.seq_len * a
    return cfg.n_layers * per_layer + 2 * d * vocab


def train_flops_per_token(cfg: ModelConfig, vocab: int) -> int:
    return 3 * forward_flops_per_token(cfg, vocab)


def parameter_count(cfg: ModelConfig, vocab: int) -> int:
    """Parameters of the unsharded model (padded vocabulary as given)."""
    d, hd = cfg.d_model, cfg.head_dim
    a, c, f = cfg.n_heads * hd, cfg.kv_heads * hd, cfg.ffn_dim
    mlp_mats = 3 if cfg.activation == "swiglu" else 2
    norm = (2 if cfg.norm == "layernorm" and cfg.bias else 1) * d
    per_layer = d * (a + 2 * c) + a * d + mlp_mats * d * f + 2 * norm
    if cfg.bias:
        per_layer += (a + 2 * c) + d + (f * (mlp_mats - 1)) + d
    total = cfg.n_layers * per_layer + vocab * d + norm
    if cfg.position == "learned":
        total += cfg.seq_len * d
    if not cfg.tie_embeddings:
        total += vocab * d
    return total
