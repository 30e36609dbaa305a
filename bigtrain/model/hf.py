"""Hugging Face ⇄ bigtrain weights: one declarative map per model family serves both directions.

    learned or sinusoidal positions + LayerNorm + GELU, multi-head   →  GPT2LMHeadModel
    rotary positions + LayerNorm + GELU, multi-head                  →  GPTNeoXForCausalLM
    rotary positions + RMSNorm + SwiGLU (any GQA)                    →  LlamaForCausalLM
    the same with routed experts in every block (top-k ≥ 2, no shared  →  MixtralForCausalLM
    experts, no biases)

Anything else is refused with the list above. bigtrain tensors are full (unsharded) and use
canonical names (see train/consolidated.py). A `Rule` pairs one bigtrain tensor with its Hugging
Face tensor(s) and names the conversion between them; `to_hf` applies the rules forwards and
`from_hf` backwards, so the two directions cannot drift apart.

Layouts: bigtrain's fused attention projection is laid out per kv group as [q_1..q_g, k, v] ×
head_dim rows. GPT-NeoX's `query_key_value` is per head [q, k, v] × head_dim, which is the same
thing when every head is its own group. GPT-2's Conv1D layers store (in, out), the transpose of a
linear weight, and its c_attn is [all q; all k; all v]. Llama keeps q, k and v apart. Where
bigtrain has no bias (or no LayerNorm bias), GPT-2 and GPT-NeoX get zeros, the same function;
sinusoidal positions export as GPT-2's position table filled with the sinusoid. Mixtral is written
in the Hub's layout (`block_sparse_moe.gate`, `experts.<e>.w1|w3|w2` = gate, up, down), which
transformers 5 fuses into its own on loading; Mixtral renormalizes the top-k router weights, as
bigtrain does for k ≥ 2 (with k = 1 bigtrain keeps the probability, so top-1 is refused).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file

from bigtrain.config.schema import ModelConfig
from bigtrain.model.gpt import sinusoidal_table

SUPPORTED = (
    "learned|sinusoidal + layernorm + gelu (GPT2LMHeadModel), rope + layernorm + gelu "
    "(GPTNeoXForCausalLM), rope + rmsnorm + swiglu (LlamaForCausalLM; with model.moe, MixtralForCausalLM)"
)


class ExportError(ValueError):
    """A model no Hugging Face class represents exactly; the message says which ones do."""


@dataclass(frozen=True)
class Rule:
    ours: str  # canonical bigtrain name
    theirs: tuple[str, ...]  # Hugging Face name(s)
    convert: str = "same"  # a key of CONVERSIONS
    zeros: int = 0  # > 0: a bias bigtrain may lack; Hugging Face then gets this many zeros


def _split_qkv(w: torch.Tensor, cfg: ModelConfig):
    """(KV·(g+2)·hd, ...) grouped rows → q (H·hd, ...), k (KV·hd, ...), v (KV·hd, ...)."""
    g, hd = cfg.n_heads // cfg.kv_heads, cfg.head_dim
    grouped = w.reshape(cfg.kv_heads, g + 2, hd, *w.shape[1:])  # (KV, g+2, hd, ...)
    q = grouped[:, :g].reshape(cfg.n_heads * hd, *w.shape[1:])
    return q, grouped[:, g].reshape(-1, *w.shape[1:]), grouped[:, g + 1].reshape(-1, *w.shape[1:])


def _join_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    g, hd = cfg.n_heads // cfg.kv_heads, cfg.head_dim
    rest = q.shape[1:]
    grouped = torch.cat(
        [
            q.reshape(cfg.kv_heads, g, hd, *rest),
            k.reshape(cfg.kv_heads, 1, hd, *rest),
            v.reshape(cfg.kv_heads, 1, hd, *rest),
        ],
        dim=1,
    )  # (KV, g+2, hd, ...)
    return grouped.reshape(-1, *rest)


def _t(x: torch.Tensor) -> torch.Tensor:
    return x.t() if x.ndim == 2 else x  # Conv1D weights are (in, out); biases stay as they are


def _concat_qkv(x: torch.Tensor, cfg: ModelConfig) -> tuple[torch.Tensor]:
    return (_t(torch.cat(_split_qkv(x, cfg))),)


def _unconcat_qkv(xs: tuple[torch.Tensor, ...], cfg: ModelConfig) -> torch.Tensor:
    q, k, v = _t(xs[0]).split([cfg.n_heads * cfg.head_dim, *[cfg.kv_heads * cfg.head_dim] * 2])
    return _join_qkv(q, k, v, cfg)


# name: (bigtrain → Hugging Face tensors, Hugging Face tensors → bigtrain)
CONVERSIONS: dict[str, tuple[Callable, Callable]] = {
    "same": (lambda x, cfg: (x,), lambda xs, cfg: xs[0]),
    "transpose": (lambda x, cfg: (_t(x),), lambda xs, cfg: _t(xs[0])),
    "qkv_concat_transpose": (_concat_qkv, _unconcat_qkv),
    "qkv_split": (_split_qkv, lambda xs, cfg: _join_qkv(*xs, cfg)),
}


def _biased_family_rules(
    cfg: ModelConfig, embed: str, block: str, names: dict, final_norm: str, head: str
) -> list[Rule]:
    """GPT-2 and GPT-NeoX: LayerNorm blocks whose every projection and norm carries a bias (zeros
    where bigtrain has none). `names`: bigtrain module → (their module, conversion); a bias takes
    its weight's conversion (a transpose leaves 1-D tensors as they are)."""
    d, f = cfg.d_model, cfg.ffn_dim
    sizes = {"attn.qkv": 3 * d, "attn.proj": d, "mlp.up": f, "mlp.down": d, "norm1": d, "norm2": d}
    rules = [Rule("embed.word.weight", (embed,))]
    for i in range(cfg.n_layers):
        b, h = f"blocks.{i}.", f"{block}.{i}."
        for ours, (theirs, convert) in names.items():
            rules += [
                Rule(b + ours + ".weight", (h + theirs + ".weight",), convert),
                Rule(b + ours + ".bias", (h + theirs + ".bias",), convert, zeros=sizes[ours]),
            ]
    return rules + [
        Rule("final_norm.norm.weight", (final_norm + ".weight",)),
        Rule("final_norm.norm.bias", (final_norm + ".bias",), zeros=d),
        Rule("head.proj.weight", (head,)),
    ]


def _gpt2_rules(cfg: ModelConfig) -> list[Rule]:
    names = {
        "attn.qkv": ("attn.c_attn", "qkv_concat_transpose"),
        "attn.proj": ("attn.c_proj", "transpose"),
        "mlp.up": ("mlp.c_fc", "transpose"),
        "mlp.down": ("mlp.c_proj", "transpose"),
        "norm1": ("ln_1", "same"),
        "norm2": ("ln_2", "same"),
    }
    rules = _biased_family_rules(
        cfg, "transformer.wte.weight", "transformer.h", names, "transformer.ln_f", "lm_head.weight"
    )
    if cfg.position == "learned":  # sinusoidal positions export as a computed table (to_hf)
        rules.append(Rule("embed.pos.weight", ("transformer.wpe.weight",)))
    return rules


def _neox_rules(cfg: ModelConfig) -> list[Rule]:
    names = {
        "attn.qkv": ("attention.query_key_value", "same"),
        "attn.proj": ("attention.dense", "same"),
        "mlp.up": ("mlp.dense_h_to_4h", "same"),
        "mlp.down": ("mlp.dense_4h_to_h", "same"),
        "norm1": ("input_layernorm", "same"),
        "norm2": ("post_attention_layernorm", "same"),
    }
    # `embed_out` is the name on the Hub; transformers 5 renames it to lm_head when loading.
    return _biased_family_rules(
        cfg, "gpt_neox.embed_in.weight", "gpt_neox.layers", names, "gpt_neox.final_layer_norm", "embed_out.weight"
    )


def _llama_rules(cfg: ModelConfig) -> list[Rule]:
    rules = [Rule("embed.word.weight", ("model.embed_tokens.weight",))]
    for i in range(cfg.n_layers):
        b, h = f"blocks.{i}.", f"model.layers.{i}."
        for suffix in ("weight", "bias") if cfg.bias else ("weight",):
            a = h + "self_attn."
            rules += [
                Rule(
                    b + "attn.qkv." + suffix,
                    (a + "q_proj." + suffix, a + "k_proj." + suffix, a + "v_proj." + suffix),
                    "qkv_split",
                ),
                Rule(b + "attn.proj." + suffix, (a + "o_proj." + suffix,)),
                Rule(b + "mlp.gate." + suffix, (h + "mlp.gate_proj." + suffix,)),
                Rule(b + "mlp.up." + suffix, (h + "mlp.up_proj." + suffix,)),
                Rule(b + "mlp.down." + suffix, (h + "mlp.down_proj." + suffix,)),
            ]
        rules += [
            Rule(b + "norm1.weight", (h + "input_layernorm.weight",)),
            Rule(b + "norm2.weight", (h + "post_attention_layernorm.weight",)),
        ]
    return rules + [
        Rule("final_norm.norm.weight", ("model.norm.weight",)),
        Rule("head.proj.weight", ("lm_head.weight",)),
    ]


def _mixtral_rules(cfg: ModelConfig) -> list[Rule]:
    rules = [r for r in _llama_rules(cfg) if ".mlp." not in r.ours]  # attention, norms, embedding, head
    for i in range(cfg.n_layers):
        b, h = f"blocks.{i}.mlp.", f"model.layers.{i}.block_sparse_moe."
        rules.append(Rule(b + "router", (h + "gate.weight",)))
        for e in range(cfg.moe.experts):
            for ours, theirs in (("gate", "w1"), ("up", "w3"), ("down", "w2")):
                rules.append(Rule(f"{b}experts.{e}.{ours}.weight", (f"{h}experts.{e}.{theirs}.weight",)))
    return rules


def _gpt2_config(cfg: ModelConfig, vocab: int) -> dict:
    return {
        "n_positions": cfg.seq_len,
        "n_embd": cfg.d_model,
        "n_layer": cfg.n_layers,
        "n_head": cfg.n_heads,
        "n_inner": cfg.ffn_dim,
        "activation_function": "gelu",
        "layer_norm_epsilon": cfg.norm_eps,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
    }


def _neox_config(cfg: ModelConfig, vocab: int) -> dict:
    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta, "partial_rotary_factor": 1.0}
    return {
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "intermediate_size": cfg.ffn_dim,
        "hidden_act": "gelu",
        "max_position_embeddings": cfg.seq_len,
        "layer_norm_eps": cfg.norm_eps,
        "use_parallel_residual": False,
        "attention_bias": True,
        "attention_dropout": 0.0,
        "hidden_dropout": 0.0,
        "rope_parameters": rope,
        # the same rotary settings as transformers 4.x spells them
        "rotary_pct": 1.0,
        "rotary_emb_base": cfg.rope_theta,
    }


def _llama_config(cfg: ModelConfig, vocab: int) -> dict:
    return {
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.ffn_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "rope_theta": cfg.rope_theta,
        "hidden_act": "silu",
        "attention_bias": cfg.bias,
        "mlp_bias": cfg.bias,
    }


def _mixtral_config(cfg: ModelConfig, vocab: int) -> dict:
    out = {k: v for k, v in _llama_config(cfg, vocab).items() if k not in ("attention_bias", "mlp_bias")}
    return {
        **out,
        "intermediate_size": cfg.expert_ffn_dim,
        "num_local_experts": cfg.moe.experts,
        "num_experts_per_tok": cfg.moe.top_k,
        "router_aux_loss_coef": cfg.moe.aux_loss_coef,
        "output_router_logits": False,
        "router_jitter_noise": 0.0,
        "sliding_window": None,
    }


@dataclass(frozen=True)
class Family:
    arch: str
    model_type: str
    rules: Callable[[ModelConfig], list[Rule]]
    config: Callable[[ModelConfig, int], dict]
    sizes: tuple[tuple[str, str], ...]  # (config.json key, ModelConfig attribute) that must agree on import


FAMILIES = {
    "gpt2": Family(
        "GPT2LMHeadModel",
        "gpt2",
        _gpt2_rules,
        _gpt2_config,
        (("n_layer", "n_layers"), ("n_embd", "d_model"), ("n_head", "n_heads")),
    ),
    "gpt_neox": Family(
        "GPTNeoXForCausalLM",
        "gpt_neox",
        _neox_rules,
        _neox_config,
        (
            ("num_hidden_layers", "n_layers"),
            ("hidden_size", "d_model"),
            ("num_attention_heads", "n_heads"),
            ("intermediate_size", "ffn_dim"),
        ),
    ),
    "llama": Family(
        "LlamaForCausalLM",
        "llama",
        _llama_rules,
        _llama_config,
        (
            ("num_hidden_layers", "n_layers"),
            ("hidden_size", "d_model"),
            ("num_attention_heads", "n_heads"),
            ("num_key_value_heads", "kv_heads"),
            ("intermediate_size", "ffn_dim"),
        ),
    ),
    "mixtral": Family(
        "MixtralForCausalLM",
        "mixtral",
        _mixtral_rules,
        _mixtral_config,
        (
            ("num_hidden_layers", "n_layers"),
            ("hidden_size", "d_model"),
            ("num_attention_heads", "n_heads"),
            ("num_key_value_heads", "kv_heads"),
            ("intermediate_size", "expert_ffn_dim"),
        ),
    ),
}


def family(cfg: ModelConfig) -> str:
    """The Hugging Face family that represents this model exactly, or an ExportError."""
    if cfg.moe.experts:
        return _mixture_family(cfg)
    if cfg.norm == "layernorm" and cfg.activation == "gelu" and cfg.position in ("learned", "sinusoidal", "rope"):
        name = "gpt_neox" if cfg.position == "rope" else "gpt2"
        if cfg.kv_heads != cfg.n_heads:
            raise ExportError(
                f"{FAMILIES[name].arch} has no grouped-query attention (model.n_kv_heads="
                f"{cfg.kv_heads}, n_heads={cfg.n_heads}): use n_kv_heads=null, or the Llama family"
            )
        return name
    if cfg.position == "rope" and cfg.norm == "rmsnorm" and cfg.activation == "swiglu":
        return "llama"
    raise ExportError(
        f"no Hugging Face class represents position={cfg.position}, norm={cfg.norm}, "
        f"activation={cfg.activation} exactly: export supports {SUPPORTED}"
    )


def _mixture_family(cfg: ModelConfig) -> str:
    moe = cfg.moe
    if not (cfg.position == "rope" and cfg.norm == "rmsnorm" and cfg.activation == "swiglu"):
        raise ExportError(
            f"MixtralForCausalLM needs position=rope, norm=rmsnorm, activation=swiglu (this model: {cfg.position}, "
            f"{cfg.norm}, {cfg.activation}); no Hugging Face class represents its mixture exactly"
        )
    refused = [
        (cfg.bias, "model.bias=true: Mixtral has no biases"),
        (moe.every != 1, f"model.moe.every={moe.every}: Mixtral has experts in every layer"),
        (moe.shared_experts > 0, f"model.moe.shared_experts={moe.shared_experts}: Mixtral has none"),
        (
            moe.top_k == 1,
            "model.moe.top_k=1: Mixtral renormalizes the top-k weights, bigtrain's top-1 keeps the probability",
        ),
    ]
    for bad, why in refused:
        if bad:
            raise ExportError(f"MixtralForCausalLM cannot represent this mixture ({why}): train without it to export")
    return "mixtral"


def _rules(cfg: ModelConfig) -> list[Rule]:
    rules = FAMILIES[family(cfg)].rules(cfg)
    return [r for r in rules if not (r.ours.startswith("head.") and cfg.tie_embeddings)]


def to_hf(t: dict, cfg: ModelConfig, vocab: int, bos: int, eos: int) -> tuple[str, dict, dict]:
    """bigtrain tensors → (architecture, config.json dict, Hugging Face state dict)."""
    fam = FAMILIES[family(cfg)]
    out = {}
    for rule in _rules(cfg):
        value = torch.zeros(rule.zeros) if rule.ours not in t and rule.zeros else t[rule.ours]
        out.update(zip(rule.theirs, CONVERSIONS[rule.convert][0](value, cfg)))
    if fam.model_type == "gpt2" and cfg.position == "sinusoidal":
        out["transformer.wpe.weight"] = sinusoidal_table(cfg.seq_len, cfg.d_model)
    config = {
        "architectures": [fam.arch],
        "model_type": fam.model_type,
        "vocab_size": vocab,
        **fam.config(cfg, vocab),
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "torch_dtype": "float32",
    }
    return fam.arch, config, {k: v.contiguous().clone() for k, v in out.items()}


def from_hf(hf: dict, config: dict, cfg: ModelConfig) -> dict:
    """Hugging Face state dict + config.json → bigtrain tensors, after checking the shapes agree."""
    name = family(cfg)
    fam = FAMILIES[name]
    if config.get("model_type") != fam.model_type:
        raise ExportError(
            f"model.init_from holds a '{config.get('model_type')}' model but model={cfg.name} is the "
            f"{fam.model_type} family: pick a matching model preset"
        )
    diffs = [
        f"{key}: folder {config.get(key)}, model {getattr(cfg, attr)}"
        for key, attr in fam.sizes
        if config.get(key) != getattr(cfg, attr)
    ]
    if diffs:
        raise ExportError(
            f"model.init_from does not match the requested model ({'; '.join(diffs)}): "
            "set the model.* sizes to the folder's"
        )
    if name == "mixtral" and config.get("num_local_experts") != cfg.moe.experts:
        raise ExportError(
            f"model.init_from has {config.get('num_local_experts')} experts per layer but model.moe.experts="
            f"{cfg.moe.experts}: set model.moe.experts to the folder's"
        )
    tied = config.get("tie_word_embeddings", name == "gpt2")  # each class's own default
    if tied != cfg.tie_embeddings:
        raise ExportError(
            f"model.init_from has tie_word_embeddings={tied} but model.tie_embeddings="
            f"{cfg.tie_embeddings}: set model.tie_embeddings={str(tied).lower()}"
        )
    if name == "gpt_neox" and config.get("use_parallel_residual", True):
        raise ExportError(
            "model.init_from is a GPT-NeoX model with use_parallel_residual=true; bigtrain's blocks "
            "are sequential (attention, then MLP): only use_parallel_residual=false folders load"
        )
    if "lm_head.weight" in hf and "embed_out.weight" not in hf and name == "gpt_neox":
        hf = {**hf, "embed_out.weight": hf["lm_head.weight"]}  # saved by transformers 5
    t = {}
    for rule in _rules(cfg):
        if rule.zeros and not _has(cfg, rule.ours):
            continue  # a bias this bigtrain model does not have
        t[rule.ours] = CONVERSIONS[rule.convert][1](tuple(hf[n] for n in rule.theirs), cfg)
    if "embed.pos.weight" in t:
        t["embed.pos.weight"] = t["embed.pos.weight"][: cfg.seq_len]
    return {k: v.float().contiguous() for k, v in t.items()}


def _has(cfg: ModelConfig, name: str) -> bool:
    """Whether a bigtrain model with this config has a tensor of this (bias) name."""
    if not name.endswith(".bias"):
        return True
    return cfg.bias and (cfg.norm == "layernorm" or "norm" not in name)


def load_hf_folder(folder: Path, cfg: ModelConfig, vocab: int) -> dict:
    """Read a Hugging Face folder (safetensors only: no pickles) into bigtrain tensors."""
    config_file = folder / "config.json"
    files = sorted(folder.glob("*.safetensors"))
    if not config_file.is_file() or not files:
        raise ExportError(
            f"model.init_from={folder} is not a Hugging Face folder with config.json and "
            "*.safetensors weights (pickled .bin weights are not loaded): save it with "
            "save_pretrained(safe_serialization=True)"
        )
    hf = {}
    for file in files:
        hf.update(load_file(str(file)))
    tensors = from_hf(hf, json.loads(config_file.read_text()), cfg)
    rows = tensors["embed.word.weight"].shape[0]
    if rows > vocab:
        raise ExportError(
            f"model.init_from has a vocabulary of {rows} but this run's is {vocab}: train with the "
            "folder's tokenizer or set model.vocab_size to at least that"
        )
    return tensors
