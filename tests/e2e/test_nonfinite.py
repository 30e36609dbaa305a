"""Non-finite numbers and instability (issue 12): a NaN loss (and so NaN gradients) injected on
the last rank is caught in the step where it happens on every layout; the update is skipped and
counted, or the run stops with a diagnostic checkpoint; loss spikes are logged as events; an fp16
loss scale that collapses to its minimum stops the run."""

import math
import re

import pytest

from bigtrain.train.consolidated import read_tensors
from tests.distributed.parity import COMMON, GPT, LAYOUTS, LLAMA
from tests.helpers import pool
from tests.helpers.launch import read_metrics

pytestmark = pytest.mark.pool


def run(corpus, run_dir, ranks: int, overrides, fault: str, fp16_on_cpu=False):
    args = [f"data.path={corpus}", f"hydra.run.dir={run_dir}", *COMMON, "trainer.sample_tokens=0", *overrides]
    return pool.run(ranks, args, env={"BIGTRAIN_FAULT": fault}, fp16_on_cpu=fp16_on_cpu)


def test_nan_step_is_skipped_counted_and_spikes_are_events(corpus, cache_dir, tmp_path):
    proc = run(corpus, tmp_path, 1, [*GPT, "trainer.max_steps=20"], "nan_loss:5,spike_loss:16")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["step"]: r for r in read_metrics(tmp_path)}
    assert rows[5]["event"] == "nonfinite_skipped" and rows[5]["skipped_steps"] == 1 and math.isnan(rows[5]["loss"])
    assert "non-finite loss in step 5" in proc.stdout and "the update was skipped (1 in a row, 1 in all)" in proc.stdout
    assert all(math.isfinite(rows[s]["loss"]) for s in rows if s != 5)  # the NaN never reached the weights
    assert rows[16]["event"] == "loss_spike" and rows[16]["loss_zscore"] > 6.0
    assert [s for s in rows if "event" in rows[s]] == [5, 16]
    assert "step 16: loss spike" in proc.stdout


def test_stop_policy_saves_a_diagnostic_checkpoint(corpus, cache_dir, tmp_path):
    proc = run(corpus, tmp_path, 1, [*GPT, "trainer.max_steps=20", "trainer.on_nonfinite=stop"], "nan_loss:5")
    assert proc.returncode == 1
    diagnostic = tmp_path / "checkpoints" / "diagnostic" / "step_00000005"
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("bigtrain: error: non-finite loss in step 5") and str(diagnostic) in line, proc.stderr
    weights = read_tensors(diagnostic / "bigtrain")
    assert len(weights) > 5 and all(bool(t.isfinite().all()) for t in weights.values())
    assert not (tmp_path / "checkpoints" / "latest").exists()  # resume would not read it
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4]


@pytest.mark.distributed
@pytest.mark.parametrize(
    "layout,family,precision",
    [("pp2", GPT, "fp32"), ("tp2", LLAMA, "fp32"), ("zero1_dp2", GPT, "bf16")],
    ids=["pipeline-last-stage", "tensor-parallel", "data-parallel-bf16"],
)
def test_every_layout_skips_the_same_step(layout, family, precision, corpus, cache_dir, tmp_path):
    ranks, overrides = LAYOUTS[layout]
    args = [*family, *overrides, f"precision={precision}", "trainer.max_steps=8", "trainer.max_skipped_steps=2"]
    proc = run(corpus, tmp_path, ranks, args, "nan_loss:3,nan_loss:4")
    # two NaN steps in a row reach max_skipped_steps=2: every rank stops together at step 4
    assert proc.returncode == 1, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "bigtrain: error:" in line]
    # rank 0 names the loss, or the gradient norm where its own loss stayed finite (a TP peer's NaN)
    assert len(errors) == 1 and re.search(r"non-finite (loss|gradient norm) in step 4 ", errors[0]), proc.stderr[-3000:]
    assert "2 steps in a row skipped (trainer.max_skipped_steps)" in errors[0]
    rows = {r["step"]: r for r in read_metrics(tmp_path)}
    assert rows[3]["event"] == "nonfinite_skipped" and math.isfinite(rows[2]["loss"])
    weights = read_tensors(tmp_path / "checkpoints" / "diagnostic" / "step_00000004" / "bigtrain")
    assert all(bool(t.isfinite().all()) for t in weights.values())


def test_fp16_loss_scale_collapse_stops_the_run(corpus, cache_dir, tmp_path):
    # 2^24 overflows at once and halves each step (hysteresis 1); the minimum is 2^22
    overrides = [*GPT, "precision=fp16", "precision.initial_scale_power=24", "precision.hysteresis=1"]
    overrides += ["precision.min_loss_scale=4194304", *LAYOUTS["single"][1]]
    proc = run(corpus, tmp_path, 1, overrides, "", fp16_on_cpu=True)
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert "the fp16 loss scale collapsed to its minimum (4.1943e+06, precision.min_loss_scale)" in line, line
