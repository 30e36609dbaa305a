"""The MoE layer (bigtrain/model/moe.py) against references written token by token, its router
losses' gradient, its capacity, and its parameter and FLOP counts (bigtrain/model/flops.py)."""

import dataclasses

import pytest
import torch

from bigtrain.config.hydra import compose
from bigtrain.config.schema import ModelConfig, MoEConfig
from bigtrain.model.flops import forward_flops_per_token, parameter_count
from bigtrain.model.gpt import GPT, MLP
from bigtrain.model.layers import TensorParallel, Vocab
from bigtrain.model.moe import MoE, moe_layers

D = 32


def layer(seed: int = 0, **moe) -> MoE:
    moe = MoEConfig(**{"experts": 4, **moe})
    cfg = ModelConfig(n_layers=2, d_model=D, n_heads=4, seq_len=16, vocab_size=64, moe=moe)
    torch.manual_seed(seed)
    tp = TensorParallel()
    return MoE(cfg, tp, 0, lambda ffn: MLP(cfg, tp, ffn))


def by_hand(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """Each token through its top-k experts one at a time, weighted as the docstring says (dropless)."""
    flat = x.reshape(-1, D)
    out = torch.zeros_like(flat)
    for i, token in enumerate(flat):
        probs = (moe.router.float() @ token.float()).softmax(-1)
        top = probs.topk(moe.top_k)
        weights = top.values / top.values.sum() if moe.top_k > 1 else top.values
        for w, e in zip(weights, top.indices.tolist()):
            out[i] += w * moe.experts[e](token[None, None]).reshape(D)
        if moe.shared is not None:
            out[i] += moe.shared(token[None, None]).reshape(D)
    return out.view(x.shape)


@pytest.mark.parametrize("moe", [dict(top_k=2), dict(top_k=1), dict(top_k=2, shared_experts=1), dict(top_k=3)])
def test_dropless_layer_equals_each_token_through_its_experts(moe):
    m = layer(**moe)
    x = torch.randn(8, 3, D)  # (T, B, D)
    with torch.no_grad():
        assert torch.allclose(m(x), by_hand(m, x), atol=1e-6)


def test_capacity_keeps_first_choices_in_token_order_and_drops_the_rest():
    m = layer(top_k=2, capacity_factor=1.0)
    with torch.no_grad():
        m.router.zero_()
        m.router[0, 0], m.router[1, 0] = 10.0, 5.0  # every token: expert 0 first, expert 1 second
    x = torch.randn(16, 1, D)
    x[..., 0] = x[..., 0].abs() + 1.0  # feature 0 positive, so the order holds for every token
    capacity = m.capacity(16)  # ceil(1.0 · 16 · 2 / 4) = 8 per expert
    assert capacity == 8
    out = m(x)
    flat = x.reshape(-1, D)
    probs = (flat.float() @ m.router.t().float()).softmax(-1)
    w = probs[:, :2] / probs[:, :2].sum(-1, keepdim=True)
    expected = torch.zeros_like(flat)
    for i in range(16):  # expert 0 and expert 1 each take their first 8 tokens; the others get nothing
        if i < capacity:
            expected[i] = w[i, 0] * m.experts[0](flat[i][None, None]).reshape(D) + w[i, 1] * m.experts[1](
                flat[i][None, None]
            ).reshape(D)
    assert torch.allclose(out.reshape(-1, D), expected, atol=1e-6)
    s = m.stats
    assert (s.load.sum(), s.dropped) == (32, 16)
    assert s.load.tolist() == [16.0, 16.0, 0.0, 0.0]  # the load counts choices, before capacity


def test_router_losses_reach_the_gradient_as_if_added_to_the_loss():
    """The layer's backward gives the router what `scale · (aux_coef · aux + z_coef · z)` added to
    the loss would give it, with aux and z written out here independently."""
    x = torch.randn(8, 2, D)
    injected = layer(seed=1, aux_loss_coef=0.3, z_loss_coef=0.05)
    injected.grad_scale = 0.25
    (injected(x) ** 2).sum().mul(0.25).backward()

    plain = layer(seed=1, aux_loss_coef=0.0, z_loss_coef=0.0)
    out = plain(x)
    logits = x.reshape(-1, D) @ plain.router.t()
    probs = logits.softmax(-1)
    chosen = probs.topk(2).indices
    fraction = torch.zeros(4).index_add_(0, chosen.reshape(-1), torch.ones(chosen.numel())) / chosen.numel()
    aux = 4 * (fraction * probs.mean(0)).sum()
    z = (torch.logsumexp(logits, -1) ** 2).mean()
    ((out**2).sum() + 0.3 * aux + 0.05 * z).mul(0.25).backward()

    assert injected.stats.aux == pytest.approx(float(aux.detach()), rel=1e-6)
    assert injected.stats.z == pytest.approx(float(z.detach()), rel=1e-6)
    assert torch.allclose(injected.router.grad, plain.router.grad, rtol=1e-5, atol=1e-8)
    without = layer(seed=1, aux_loss_coef=0.0, z_loss_coef=0.0)
    (without(x) ** 2).sum().mul(0.25).backward()
    assert (injected.router.grad - without.router.grad).norm() > 1e-3 * without.router.grad.norm()  # it acts
    for a, b in zip(injected.experts.parameters(), plain.experts.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-7)


def test_a_uniform_router_reads_aux_loss_one():
    m = layer(top_k=2)
    with torch.no_grad():
        m.router.zero_()
    m(torch.randn(8, 2, D))
    assert m.stats.aux == pytest.approx(1.0, abs=1e-6)


def test_every_expert_gets_a_gradient_even_when_no_token_chose_it():
    """ZeRO's reduction hooks need the same parameters to get gradients on every rank."""
    m = layer(top_k=1)
    with torch.no_grad():
        m.router.zero_()
        m.router[2, 0] = 50.0
    x = torch.randn(4, 2, D)
    x[..., 0] = x[..., 0].abs() + 1.0  # every token to expert 2
    m(x).sum().backward()
    assert m.stats.load.tolist() == [0.0, 0.0, 8.0, 0.0]
    grads = [e.up.weight.grad for e in m.experts]
    assert all(g is not None for g in grads)
    assert [bool(g.abs().sum() > 0) for g in grads] == [False, False, True, False]


def test_moe_every_other_layer_and_the_live_parameter_count():
    cfg = compose(["model=moe_tiny", "model.moe.every=2", "model.moe.shared_experts=1"]).model
    model = GPT(cfg, TensorParallel(), Vocab(1000, 1000))
    assert [m.index for m in moe_layers(model)] == [1, 3]
    assert sum(p.numel() for p in model.parameters()) == parameter_count(cfg, 1000)
    dense = dataclasses.replace(cfg, moe=MoEConfig())
    assert parameter_count(cfg, 1000) > parameter_count(dense, 1000)


def test_mixtral_preset_counts_published_parameters_and_active_flops():
    """Mixtral-8x7B: 46.7B parameters, 12.9B active per token (Mistral AI's figures)."""
    cfg = compose(["model=mixtral_8x7b"]).model
    assert parameter_count(cfg, 32000) / 1e9 == pytest.approx(46.7, abs=0.05)
    assert parameter_count(cfg, 32000, active=True) / 1e9 == pytest.approx(12.9, abs=0.05)
    # the forward's weight FLOPs are 2 per active weight (the embedding lookup costs none), plus attention
    weights = 2 * (parameter_count(cfg, 32000, active=True) - 32000 * cfg.d_model)
    attention = cfg.n_layers * 4 * cfg.seq_len * cfg.d_model
    norms = cfg.n_layers * 2 * cfg.d_model + cfg.d_model
    assert forward_flops_per_token(cfg, 32000) == weights + attention - 2 * norms
