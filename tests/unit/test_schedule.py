import math

import pytest

from bigtrain.config import OptimConfig
from bigtrain.optim import lr_at


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
