import math

import pytest

from bigtrain.config import OptimConfig
from bigtrain.model.optim import lr_at


def test_warmup_cosine_min_lr_values():
    cfg = OptimConfig(lr=1e-3, min_lr=1e-4, warmup_steps=100, decay_steps=2000)
    assert lr_at(0, cfg, 2000) == pytest.approx(1e-3 * 1 / 101)
    assert lr_at(99, cfg, 2000) == pytest.approx(1e-3 * 100 / 101)
    assert lr_at(100, cfg, 2000) == pytest.approx(1e-3)  # cosine starts at the peak
    assert lr_at(1050, cfg, 2000) == pytest.approx(1e-4 + 0.5 * 9e-4)  # half way: the mean
    mid = 100 + 1900 // 4
    assert lr_at(mid, cfg, 2000) == pytest.approx(1e-4 + 0.5 * (1 + math.cos(math.pi * 0.25)) * 9e-4)
    assert lr_at(2000, cfg, 2000) == pytest.approx(1e-4)
    assert lr_at(5000, cfg, 2000) == pytest.approx(1e-4)


def test_decay_defaults_to_max_steps_and_is_monotone():
    cfg = OptimConfig(lr=6e-4, min_lr=6e-5, warmup_steps=10)
    values = [lr_at(s, cfg, 200) for s in range(201)]
    assert values[200] == pytest.approx(6e-5)
    assert all(a < b for a, b in zip(values[:10], values[1:11]))
    assert all(a >= b for a, b in zip(values[10:], values[11:]))


@pytest.mark.parametrize("implementation", ["fused", "foreach", "for_loop"])
def test_adamw_implementations_give_the_same_update(implementation):
    """optim.implementation picks torch AdamW's kernel; each takes the same steps as the for-loop
    one (to rounding) on bigtrain's decay groups under the schedule, and auto means fused."""
    import torch  # noqa: PLC0415

    from bigtrain.config.schema import ModelConfig  # noqa: PLC0415
    from bigtrain.model.gpt import GPT, lm_loss  # noqa: PLC0415
    from bigtrain.model.optim import build_optimizer  # noqa: PLC0415

    def trained(impl: str):
        model = GPT(ModelConfig(n_layers=2, d_model=64, seq_len=16, vocab_size=50), seed=3)
        optimizer, schedule = build_optimizer(model, OptimConfig(implementation=impl, warmup_steps=2), 10)
        gen = torch.Generator().manual_seed(0)
        for _ in range(5):
            x = torch.randint(0, 50, (4, 16), generator=gen)
            lm_loss(model(x), x, torch.ones(4, 16)).backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
        return [p.detach().clone() for p in model.parameters()], optimizer

    start = [
        p.detach().clone()
        for p in GPT(ModelConfig(n_layers=2, d_model=64, seq_len=16, vocab_size=50), seed=3).parameters()
    ]
    reference, _ = trained("for_loop")
    params, optimizer = trained(implementation)
    chosen = {"fused": ("fused", True), "foreach": ("foreach", True), "for_loop": ("foreach", False)}[implementation]
    assert optimizer.defaults[chosen[0]] is chosen[1]
    assert max((p - s).abs().max().item() for p, s in zip(params, start)) > 1e-4  # it stepped
    # the kernels differ only in rounding, largest where a gradient is near eps: under 1% of a step
    assert max((p - r).abs().max().item() for p, r in zip(params, reference)) < 0.01 * OptimConfig().lr
    auto, _ = build_optimizer(GPT(ModelConfig(n_layers=1, vocab_size=50)), OptimConfig(), 10)
    assert auto.defaults["fused"] is True
