"""Model FLOPs: the count MFU is measured against.

Per token, a forward pass costs 2 FLOPs (multiply + add) for every weight it multiplies, plus the
attention scores and weighted sum. With d = d_model, a = n_heads·head_dim (query width),
c = n_kv_heads·head_dim (key/value width), f = ffn hidden size, V = vocabulary, T = sequence:

    per layer   2·(d·a + 2·d·c + a·d)           q, k, v, output projections
              + 2·(2 or 3)·d·f                  MLP: up + down (GELU) or gate + up + down (SwiGLU)
              + 2·2·T·a                         QKᵀ and attention·V, counted over the full T×T
                                                square as Megatron and PaLM do (no causal halving)
    head        2·d·V

A mixture-of-experts layer (model.moe) counts what a token runs through, not what the layer holds:

    per MoE layer  2·d·E                        the router's logits over E experts
              + top_k · 2·(2 or 3)·d·f_e        its top-k experts (f_e = model.moe.ffn_hidden)
              + 2·(2 or 3)·d·(s·f_e)            s shared experts, as one MLP s·f_e wide
    in place of the dense MLP; `parameter_count` counts all E experts (memory), `active` only these.

Training is 3× the forward (backward costs twice the forward). Activation recomputation is not
counted: MFU measures useful model work, so checkpointing lowers it, as it should.
Embedding lookups, norms, activations and softmax are ignored (under 1% at GPT-2 scale).
"""

from __future__ import annotations

from bigtrain.config.schema import ModelConfig


def forward_flops_per_token(cfg: ModelConfig, vocab: int) -> int:
    d, hd = cfg.d_model, cfg.head_dim
    a, c = cfg.n_heads * hd, cfg.kv_heads * hd
    attention = 2 * (d * a + 2 * d * c + a * d) + 2 * 2 * cfg.seq_len * a
    total = sum(attention + 2 * _mlp_weights(cfg, i, active=True) for i in range(cfg.n_layers))
    return total + 2 * d * vocab


def train_flops_per_token(cfg: ModelConfig, vocab: int) -> int:
    return 3 * forward_flops_per_token(cfg, vocab)


def _mlp_weights(cfg: ModelConfig, layer: int, active: bool, biases: bool = False) -> int:
    """Weights of block `layer`'s feed-forward part: the dense MLP, or the MoE layer's router,
    experts (all of them, or the top-k a token runs through when `active`) and shared experts."""
    swiglu = cfg.activation == "swiglu"

    def mlp(f: int) -> int:  # up (+ gate) and down, with their biases when `biases`
        bias = f * (2 if swiglu else 1) + cfg.d_model if biases and cfg.bias else 0
        return (3 if swiglu else 2) * cfg.d_model * f + bias

    moe = cfg.moe
    if not moe.is_moe_layer(layer):
        return mlp(cfg.ffn_dim)
    f = cfg.expert_ffn_dim
    routed = (moe.top_k if active else moe.experts) * mlp(f)
    shared = mlp(moe.shared_experts * f) if moe.shared_experts else 0
    return cfg.d_model * moe.experts + routed + shared


def parameter_count(cfg: ModelConfig, vocab: int, active: bool = False) -> int:
    """Parameters of the unsharded model (padded vocabulary as given); `active`: those one token
    uses (with routed experts, only its top-k)."""
    d, hd = cfg.d_model, cfg.head_dim
    a, c = cfg.n_heads * hd, cfg.kv_heads * hd
    norm = (2 if cfg.norm == "layernorm" and cfg.bias else 1) * d
    attention = d * (a + 2 * c) + a * d + 2 * norm + ((a + 2 * c) + d if cfg.bias else 0)
    total = sum(attention + _mlp_weights(cfg, i, active, biases=True) for i in range(cfg.n_layers))
    total += vocab * d + norm
    if cfg.position == "learned":
        total += cfg.seq_len * d
    if not cfg.tie_embeddings:
        total += vocab * d
    return total
