"""Exact resume: stopped by SIGTERM after step 6 and relaunched, a run has bitwise the same
per-step losses and final weights as an uninterrupted run (fp32, dropout on, so RNG matters).
SIGKILL at random steps on one process, zero2 dp2 and tp2 is tests/e2e/test_random_kills.py;
here the layouts whose saves take other paths: ZeRO-3's partitioned parameters, pipeline stages,
and a mixture of experts under ZeRO-2 (its router's losses and expert loads repeat too)."""

import pytest
import torch

from bigtrain.train.consolidated import read_tensors
from tests.distributed.parity import GPT, LAYOUTS, LLAMA, MOE, run_layout_raw
from tests.helpers.launch import assert_streamed, read_metrics

pytestmark = [pytest.mark.distributed, pytest.mark.pool]

# layout (parity.LAYOUTS) and the model family it trains; one process is tests/e2e/test_relaunch.py
CASES = {"zero3_dp2": ("zero3_dp2", GPT), "pp2": ("pp2", LLAMA), "moe_zero2_dp2": ("zero2_dp2", MOE)}
RESUME = ["trainer.max_steps=12", "model.dropout=0.1", "trainer.eval_interval=6", "trainer.eval_iters=2"]


@pytest.mark.parametrize("name", list(CASES))
def test_stop_and_resume_is_bitwise_exact(name, corpus, cache_dir, tmp_path):
    layout, family = CASES[name]
    ranks, overrides = LAYOUTS[layout]
    args = [*family, *overrides, *RESUME]
    whole = run_layout_raw(corpus, tmp_path / "whole", ranks, args)
    assert whole.returncode == 0, whole.stderr[-3000:]
    stopped = run_layout_raw(corpus, tmp_path / "split", ranks, args, env={"BIGTRAIN_FAULT": "after_step:6"})
    assert stopped.returncode == 75, stopped.stderr[-3000:]
    assert "stopped by a signal after step 6" in stopped.stdout
    assert [r["step"] for r in read_metrics(tmp_path / "split" / "run")] == list(range(1, 7))
    resumed = run_layout_raw(corpus, tmp_path / "split", ranks, args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout and "at step 6 (48 samples), exactly" in resumed.stdout

    a, b = read_metrics(tmp_path / "whole" / "run"), read_metrics(tmp_path / "split" / "run")
    assert [r["step"] for r in b] == list(range(1, 13))
    for key in ("loss", "grad_norm", "lr", *(("moe_aux_loss", "moe_z_loss", "moe_load") if family is MOE else ())):
        assert [r[key] for r in a] == [r[key] for r in b], key
    assert [r["val_loss"] for r in a if "val_loss" in r] == [r["val_loss"] for r in b if "val_loss" in r]
    assert_streamed(tmp_path / "split" / "run" / "checkpoints" / "step_00000012")
    final_a = read_tensors(tmp_path / "whole" / "run" / "checkpoints" / "step_00000012" / "bigtrain")
    final_b = read_tensors(tmp_path / "split" / "run" / "checkpoints" / "step_00000012" / "bigtrain")
    assert final_a.keys() == final_b.keys() and len(final_a) > 10
    for key in final_a:
        assert torch.equal(final_a[key], final_b[key]), key
    moments_a = read_tensors(tmp_path / "whole" / "run" / "checkpoints" / "step_00000012" / "bigtrain", "optim")
    moments_b = read_tensors(tmp_path / "split" / "run" / "checkpoints" / "step_00000012" / "bigtrain", "optim")
    assert moments_a.keys() == moments_b.keys() and len(moments_a) >= 2 * len(final_a)  # exp_avg, exp_avg_sq
    for key in moments_a:
        assert torch.equal(moments_a[key], moments_b[key]), key
