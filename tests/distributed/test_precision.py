"""bf16 and fp16 (dynamic loss scaling) stay within documented tolerances of fp32 on CPU.

Tolerances (per-step relative loss difference over 20 steps of the parity model):
  bf16  2e-3  (measured 5e-4: DeepSpeed's BF16 optimizer keeps fp32 master weights and gradients)
  fp16  1e-3  (measured 3e-5: fp16 activations, fp32 master weights, loss scale 2^16)
Both run on DeepSpeed's ZeRO-1 optimizers (see bigtrain/config/deepspeed.py).
"""

import pytest

from tests.distributed.parity import COMMON, GPT, LAYOUTS, STEPS, worst_relative_difference
from tests.helpers import bank
from tests.helpers.launch import read_metrics

pytestmark = pytest.mark.pool
TOLERANCE = {"bf16": 2e-3, "fp16": 1e-3}


def run_single(corpus, tmp_path_factory, precision_overrides, fp16_on_cpu=False):
    """One process, from the run bank (fp32 and bf16 are parity's one-process references);
    `fp16_on_cpu`: as tests/helpers/fp16_on_cpu.py runs it."""
    args = [f"data.path={corpus}", *COMMON, *GPT, *LAYOUTS["single"][1], *precision_overrides]
    run_dir, proc = bank.trained(1, args, tmp_path_factory, fp16_on_cpu=fp16_on_cpu)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rows = read_metrics(run_dir)
    assert len(rows) == STEPS
    return rows


@pytest.fixture(scope="module")
def fp32(corpus, cache_dir, tmp_path_factory):
    return run_single(corpus, tmp_path_factory, ["precision=fp32"])


def test_bf16_close_to_fp32(fp32, corpus, tmp_path_factory):
    rows = run_single(corpus, tmp_path_factory, ["precision=bf16"])
    worst = worst_relative_difference(rows, fp32)
    print(f"\nbf16 vs fp32: worst relative loss difference {worst:.2e}")
    assert 0 < worst < TOLERANCE["bf16"]  # > 0: it really computed in bf16
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.4


def test_fp16_dynamic_loss_scaling(fp32, corpus, tmp_path_factory):
    fp16 = ["precision=fp16", "precision.initial_scale_power=16"]
    rows = run_single(corpus, tmp_path_factory, fp16, fp16_on_cpu=True)
    worst = worst_relative_difference(rows, fp32)
    print(f"\nfp16 vs fp32: worst relative loss difference {worst:.2e}")
    assert worst < TOLERANCE["fp16"]
    scales = [r["loss_scale"] for r in rows]
    assert all(s <= 2.0**16 and float(s).is_integer() for s in scales)
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.4


def test_fp16_scale_shrinks_on_overflow_without_hysteresis(corpus, tmp_path_factory):
    # A huge initial scale overflows at once; with hysteresis 1 every overflow halves it and the
    # step is skipped, until the scale is small enough to train.
    rows = run_single(
        corpus,
        tmp_path_factory,
        ["precision=fp16", "precision.initial_scale_power=24", "precision.hysteresis=1"],
        fp16_on_cpu=True,
    )
    scales = [r["loss_scale"] for r in rows]
    assert scales[:3] == [2.0**23, 2.0**22, 2.0**21], scales
    assert all(b in (a, a / 2) for a, b in zip(scales, scales[1:])), scales
    assert scales[-1] < 2.0**21 and rows[-1]["loss"] < rows[0]["loss"] - 0.1
