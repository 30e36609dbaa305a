"""Hugging Face ⇄ bigtrain weights, for the two families a Hugging Face class represents exactly.

    learned or sinusoidal positions + LayerNorm + GELU, multi-head  →  GPT2LMHeadModel
    rotary positions + RMSNorm + SwiGLU (any GQA)                   →  LlamaForCausalLM

bigtrain tensors are full (unsharded) and use canonical names (see train/consolidated.py). The
fused attention projection is laid out per kv group as [q_1..q_g, k, v] × head_dim rows; GPT-2's
Conv1D layers store (in, out), the transpose of a linear weight. A bigtrain model without biases
exports to GPT-2 with zero biases (the same function); sinusoidal positions export as GPT-2's
position table filled with the sinusoid.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from bigtrain.config.schema import ModelConfig


class ExportError(ValueError):
    """A model no Hugging Face class represents exactly; the message says which ones do."""


def family(cfg: ModelConfig) -> str:
    if cfg.position in ("learned", "sinusoidal") and cfg.norm == "layernorm" and cfg.activation == "gelu":
        if cfg.kv_heads != cfg.n_heads:
            raise ExportError(f"GPT2LMHeadModel has no grouped-query attention (model.n_kv_heads={cfg.kv_heads}, "
                              f"n_heads={cfg.n_heads}): use n_kv_heads=null, or the Llama family")
        return "gpt2"
    if cfg.position == "rope" and cfg.norm == "rmsnorm" and cfg.activation == "swiglu":
        return "llama"
    raise ExportError(
        f"no Hugging Face class represents position={cfg.position}, norm={cfg.norm}, activation={cfg.activation} "
        "exactly: export supports learned|sinusoidal + layernorm + gelu (GPT2LMHeadModel) and "
        "rope + rmsnorm + swiglu (LlamaForCausalLM)")


def _split_qkv(w: torch.Tensor, cfg: ModelConfig):
    """(KV·(g+2)·hd, ...) grouped rows → q (H·hd, ...), k (KV·hd, ...), v (KV·hd, ...)."""
    g, hd = cfg.n_heads // cfg.kv_heads, cfg.head_dim
    grouped = w.reshape(cfg.kv_heads, g + 2, hd, *w.shape[1:])  # (KV, g+2, hd, ...)
    q = grouped[:, :g].reshape(cfg.n_heads * hd, *w.shape[1:])
    return q, grouped[:, g].reshape(-1, *w.shape[1:]), grouped[:, g + 1].reshape(-1, *w.shape[1:])


def _join_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    g, hd = cfg.n_heads // cfg.kv_heads, cfg.head_dim
    rest = q.shape[1:]
    grouped = torch.cat([q.reshape(cfg.kv_heads, g, hd, *rest), k.reshape(cfg.kv_heads, 1, hd, *rest),
                         v.reshape(cfg.kv_heads, 1, hd, *rest)], dim=1)  # (KV, g+2, hd, ...)
    return grouped.reshape(-1, *rest)


def _zeros_if_missing(t: dict, name: str, size: int) -> torch.Tensor:
    return t[name] if name in t else torch.zeros(size)


def to_hf(t: dict, cfg: ModelConfig, vocab: int, bos: int, eos: int) -> tuple[str, dict, dict]:
    """bigtrain tensors → (architecture, config.json dict, Hugging Face state dict)."""
    kind = family(cfg)
    d, L = cfg.d_model, cfg.n_layers
    out = {}
    if kind == "gpt2":
        out["transformer.wte.weight"] = t["embed.word.weight"]
        if cfg.position == "learned":
            out["transformer.wpe.weight"] = t["embed.pos.weight"]
        else:
            from bigtrain.model.gpt import sinusoidal_table
            out["transformer.wpe.weight"] = sinusoidal_table(cfg.seq_len, d)
        for i in range(L):
            b, h = f"blocks.{i}.", f"transformer.h.{i}."
            q, k, v = _split_qkv(t[b + "attn.qkv.weight"], cfg)
            out[h + "attn.c_attn.weight"] = torch.cat([q, k, v]).t()
            qb, kb, vb = _split_qkv(_zeros_if_missing(t, b + "attn.qkv.bias", 3 * d), cfg)
            out[h + "attn.c_attn.bias"] = torch.cat([qb, kb, vb])
            out[h + "attn.c_proj.weight"] = t[b + "attn.proj.weight"].t()
            out[h + "attn.c_proj.bias"] = _zeros_if_missing(t, b + "attn.proj.bias", d)
            out[h + "mlp.c_fc.weight"] = t[b + "mlp.up.weight"].t()
            out[h + "mlp.c_fc.bias"] = _zeros_if_missing(t, b + "mlp.up.bias", cfg.ffn_dim)
            out[h + "mlp.c_proj.weight"] = t[b + "mlp.down.weight"].t()
            out[h + "mlp.c_proj.bias"] = _zeros_if_missing(t, b + "mlp.down.bias", d)
            for ours, theirs in (("norm1", "ln_1"), ("norm2", "ln_2")):
                out[h + theirs + ".weight"] = t[b + ours + ".weight"]
                out[h + theirs + ".bias"] = _zeros_if_missing(t, b + ours + ".bias", d)
        out["transformer.ln_f.weight"] = t["final_norm.norm.weight"]
        out["transformer.ln_f.bias"] = _zeros_if_missing(t, "final_norm.norm.bias", d)
        config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": vocab,
                  "n_positions": cfg.seq_len, "n_embd": d, "n_layer": L, "n_head": cfg.n_heads,
                  "n_inner": cfg.ffn_dim, "activation_function": "gelu", "layer_norm_epsilon": cfg.norm_eps,
                  "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
    else:
        out["model.embed_tokens.weight"] = t["embed.word.weight"]
        for i in range(L):
            b, h = f"blocks.{i}.", f"model.layers.{i}."
            for suffix in ("weight", "bias"):
                if b + "attn.qkv." + suffix in t:
                    q, k, v = _split_qkv(t[b + "attn.qkv." + suffix], cfg)
                    out.update({h + "self_attn.q_proj." + suffix: q, h + "self_attn.k_proj." + suffix: k,
                                h + "self_attn.v_proj." + suffix: v})
                for ours, theirs in (("attn.proj", "self_attn.o_proj"), ("mlp.gate", "mlp.gate_proj"),
                                     ("mlp.up", "mlp.up_proj"), ("mlp.down", "mlp.down_proj")):
                    if b + ours + "." + suffix in t:
                        out[h + theirs + "." + suffix] = t[b + ours + "." + suffix]
            out[h + "input_layernorm.weight"] = t[b + "norm1.weight"]
            out[h + "post_attention_layernorm.weight"] = t[b + "norm2.weight"]
        out["model.norm.weight"] = t["final_norm.norm.weight"]
        config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab,
                  "hidden_size": d, "intermediate_size": cfg.ffn_dim, "num_hidden_layers": L,
                  "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.kv_heads,
                  "head_dim": cfg.head_dim, "max_position_embeddings": cfg.seq_len, "rms_norm_eps": cfg.norm_eps,
                  "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
                  "rope_theta": cfg.rope_theta, "hidden_act": "silu", "attention_bias": cfg.bias,
                  "mlp_bias": cfg.bias}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = t["head.proj.weight"]
    config.update(tie_word_embeddings=cfg.tie_embeddings, bos_token_id=bos, eos_token_id=eos,
                  torch_dtype="float32")
    return config["architectures"][0], config, {k: v.contiguous().clone() for k, v in out.items()}


def from_hf(hf: dict, config: dict, cfg: ModelConfig) -> dict:
    """Hugging Face state dict + config.json → bigtrain tensors, after checking the shapes agree."""
    kind = family(cfg)
    expected = {"gpt2": {"n_layer": cfg.n_layers, "n_embd": cfg.d_model, "n_head": cfg.n_heads},
                "llama": {"num_hidden_layers": cfg.n_layers, "hidden_size": cfg.d_model,
                          "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.kv_heads,
                          "intermediate_size": cfg.ffn_dim}}[kind]
    if config.get("model_type") != kind:
        raise ExportError(f"model.init_from holds a '{config.get('model_type')}' model but model={cfg.name} is the "
                          f"{kind} family: pick a matching model preset")
    diffs = [f"{k}: folder {config.get(k)}, model {v}" for k, v in expected.items() if config.get(k) != v]
    if diffs:
        raise ExportError(f"model.init_from does not match the requested model ({'; '.join(diffs)}): "
                          "set the model.* sizes to the folder's")
    tied = config.get("tie_word_embeddings", True)
    if tied != cfg.tie_embeddings:
        raise ExportError(f"model.init_from has tie_word_embeddings={tied} but model.tie_embeddings="
                          f"{cfg.tie_embeddings}: set model.tie_embeddings={str(tied).lower()}")
    t = {}
    if kind == "gpt2":
        t["embed.word.weight"] = hf["transformer.wte.weight"]
        if cfg.position == "learned":
            t["embed.pos.weight"] = hf["transformer.wpe.weight"][: cfg.seq_len]
        d = cfg.d_model
        for i in range(cfg.n_layers):
            b, h = f"blocks.{i}.", f"transformer.h.{i}."
            q, k, v = hf[h + "attn.c_attn.weight"].t().split(d)
            t[b + "attn.qkv.weight"] = _join_qkv(q, k, v, cfg)
            t[b + "attn.proj.weight"] = hf[h + "attn.c_proj.weight"].t()
            t[b + "mlp.up.weight"] = hf[h + "mlp.c_fc.weight"].t()
            t[b + "mlp.down.weight"] = hf[h + "mlp.c_proj.weight"].t()
            t[b + "norm1.weight"], t[b + "norm2.weight"] = hf[h + "ln_1.weight"], hf[h + "ln_2.weight"]
            if cfg.bias:
                qb, kb, vb = hf[h + "attn.c_attn.bias"].split(d)
                t[b + "attn.qkv.bias"] = _join_qkv(qb, kb, vb, cfg)
                t[b + "attn.proj.bias"] = hf[h + "attn.c_proj.bias"]
                t[b + "mlp.up.bias"], t[b + "mlp.down.bias"] = hf[h + "mlp.c_fc.bias"], hf[h + "mlp.c_proj.bias"]
                t[b + "norm1.bias"], t[b + "norm2.bias"] = hf[h + "ln_1.bias"], hf[h + "ln_2.bias"]
        t["final_norm.norm.weight"] = hf["transformer.ln_f.weight"]
        if cfg.bias:
            t["final_norm.norm.bias"] = hf["transformer.ln_f.bias"]
    else:
        t["embed.word.weight"] = hf["model.embed_tokens.weight"]
        for i in range(cfg.n_layers):
            b, h = f"blocks.{i}.", f"model.layers.{i}."
            for suffix in ("weight", "bias") if cfg.bias else ("weight",):
                a = h + "self_attn."
                t[b + "attn.qkv." + suffix] = _join_qkv(hf[a + "q_proj." + suffix], hf[a + "k_proj." + suffix],
                                                        hf[a + "v_proj." + suffix], cfg)
                for ours, theirs in (("attn.proj", "self_attn.o_proj"), ("mlp.gate", "mlp.gate_proj"),
                                     ("mlp.up", "mlp.up_proj"), ("mlp.down", "mlp.down_proj")):
                    t[b + ours + "." + suffix] = hf[h + theirs + "." + suffix]
            t[b + "norm1.weight"] = hf[h + "input_layernorm.weight"]
            t[b + "norm2.weight"] = hf[h + "post_attention_layernorm.weight"]
        t["final_norm.norm.weight"] = hf["model.norm.weight"]
    if not cfg.tie_embeddings:
        t["head.proj.weight"] = hf["lm_head.weight"]
    return {k: v.float().contiguous() for k, v in t.items()}


def load_hf_folder(folder: Path, cfg: ModelConfig, vocab: int) -> dict:
    """Read a Hugging Face folder (safetensors only: no pickles) into bigtrain tensors."""
    from safetensors.torch import load_file

    config_file = folder / "config.json"
    files = sorted(folder.glob("*.safetensors"))
    if not config_file.is_file() or not files:
        raise ExportError(f"model.init_from={folder} is not a Hugging Face folder with config.json and "
                          "*.safetensors weights (pickled .bin weights are not loaded): save it with "
                          "save_pretrained(safe_serialization=True)")
    hf = {}
    for file in files:
        hf.update(load_file(str(file)))
    tensors = from_hf(hf, json.loads(config_file.read_text()), cfg)
    rows = tensors["embed.word.weight"].shape[0]
    if rows > vocab:
        raise ExportError(f"model.init_from has a vocabulary of {rows} but this run's is {vocab}: train with the "
                          "folder's tokenizer or set model.vocab_size to at least that")
    return tensors
