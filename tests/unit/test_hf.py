import itertools
import json

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


def test_mixture_exports_to_mixtral_with_the_same_logits(tmp_path):
    """A random bigtrain MoE model written in the Hub's Mixtral layout: transformers loads it (fusing
    the experts its own way) and computes the same logits; the folder imports back exactly."""
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import save_file  # noqa: PLC0415

    from bigtrain.config.schema import MoEConfig  # noqa: PLC0415
    from bigtrain.model.hf import load_hf_folder, to_hf  # noqa: PLC0415

    cfg = ModelConfig(
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        d_model=32,
        seq_len=16,
        position="rope",
        norm="rmsnorm",
        activation="swiglu",
        bias=False,
        tie_embeddings=False,
        vocab_size=64,
        moe=MoEConfig(experts=4, top_k=2, ffn_hidden=48),
    )
    assert family(cfg) == "mixtral"
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    with torch.no_grad():
        for block in model.blocks:
            block.mlp.router.normal_(std=0.5)  # decided routing, not near-ties
    tensors = {n: p.detach().clone() for n, p in local_params(model, cfg.n_layers)}
    arch, config, state = to_hf(tensors, cfg, 64, 1, 2)
    assert arch == "MixtralForCausalLM" and sorted(r.ours for r in _rules(cfg)) == sorted(tensors)
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    (tmp_path / "config.json").write_text(json.dumps(config))
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert type(hf).__name__ == "MixtralForCausalLM"
    tokens = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(tokens).transpose(0, 1), hf(tokens).logits
    assert (ours - theirs).abs().max() < 1e-5
    back = load_hf_folder(tmp_path, cfg, 64)
    assert back.keys() == tensors.keys() and all(torch.equal(back[k], tensors[k]) for k in back)


@pytest.mark.parametrize(
    "moe,why",
    [
        (dict(top_k=1), "model.moe.top_k=1"),
        (dict(shared_experts=1), "model.moe.shared_experts=1"),
        (dict(every=2), "model.moe.every=2"),
    ],
)
def test_mixtures_mixtral_cannot_represent_are_refused(moe, why):
    from bigtrain.config.schema import MoEConfig  # noqa: PLC0415

    cfg = ModelConfig(position="rope", norm="rmsnorm", activation="swiglu", bias=False, moe=MoEConfig(experts=4, **moe))
    with pytest.raises(ExportError, match=f"MixtralForCausalLM cannot represent this mixture \\({why}"):
        family(cfg)
    with pytest.raises(ExportError, match="MixtralForCausalLM needs position=rope"):
        family(ModelConfig(moe=MoEConfig(experts=4)))
