import pytest
import torch

from bigtrain.config import ModelConfig
from bigtrain.model.hf import ExportError, _join_qkv, _split_qkv, family


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
    with pytest.raises(ExportError, match="no Hugging Face class represents position=rope, norm=layernorm"):
        family(ModelConfig(position="rope"))
    with pytest.raises(ExportError, match="GPT2LMHeadModel has no grouped-query attention"):
        family(ModelConfig(n_kv_heads=2))
