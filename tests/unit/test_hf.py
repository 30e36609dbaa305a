import itertools

import pytest
import torch

from bigtrain.config import ModelConfig
from bigtrain.config.hydra import compose
from bigtrain.model.gpt import GPT
from bigtrain.model.hf import FAMILIES, ExportError, _join_qkv, _rules, _split_qkv, family
from bigtrain.train.consolidated import local_params


@pytest.mark.parametrize("kv", [1, 2, 4])
def test_qkv_split_and_join_are_inverse(kv):
    cfg = ModelConfig(n_heads=4, n_kv_heads=kv, d_model=32)
    w = torch.randn(kv * (4 // kv + 2) * 8, 32)
    q, k, v = _split_qkv(w, cfg)
    assert q.shape == (32, 32) and k.shape == v.shape == (kv * 8, 32)
    assert torch.equal(_join_qkv(q, k, v, cfg), w)


def test_families_and_clear_errors():
    assert family(ModelConfig()) == "gpt2"
    assert family(ModelConfig(position="sinusoidal", bias=False)) == "gpt2"
    assert family(ModelConfig(position="rope", norm="rmsnorm", activation="swiglu", n_kv_heads=2)) == "llama"
    assert family(ModelConfig(position="rope")) == "gpt_neox"
    assert family(compose(["experiment=shakespeare_char_cpu"]).model) == "gpt_neox"
    with pytest.raises(
        ExportError,
        match="no Hugging Face class represents position=rope, norm=rmsnorm, "
        "activation=gelu exactly: export supports learned|sinusoidal",
    ):
        family(ModelConfig(position="rope", norm="rmsnorm"))
    with pytest.raises(ExportError, match="GPT2LMHeadModel has no grouped-query attention"):
        family(ModelConfig(n_kv_heads=2))
    with pytest.raises(ExportError, match="GPTNeoXForCausalLM has no grouped-query attention"):
        family(ModelConfig(position="rope", n_kv_heads=2))


def test_every_model_the_config_can_describe_exports_or_is_refused():
    """position × norm × activation × GQA: exactly the documented families export, with weight
    maps that cover every bigtrain tensor once; the rest raise ExportError naming the choices."""

    exported = set()
    for position, norm, act, kv, bias, tied in itertools.product(
        ("learned", "sinusoidal", "rope"),
        ("layernorm", "rmsnorm"),
        ("gelu", "swiglu"),
        (4, 2),
        (True, False),
        (True, False),
    ):
        cfg = ModelConfig(
            n_layers=1,
            n_heads=4,
            n_kv_heads=kv,
            d_model=32,
            seq_len=8,
            position=position,
            norm=norm,
            activation=act,
            bias=bias,
            tie_embeddings=tied,
            vocab_size=50,
        )
        try:
            name = family(cfg)
        except ExportError as err:
            assert "export supports" in str(err) or "has no grouped-query attention" in str(err)
            continue
        exported.add(FAMILIES[name].arch)
        ours = {n for n, _ in local_params(GPT(cfg), cfg.n_layers)}
        mapped = [r.ours for r in _rules(cfg) if not r.zeros or r.ours in ours]
        assert sorted(mapped) == sorted(ours), (name, set(mapped) ^ ours)
    assert exported == {"GPT2LMHeadModel", "GPTNeoXForCausalLM", "LlamaForCausalLM"}
