"""A dead rank (issue 12): one rank of a 2-rank job is killed with SIGKILL in the middle of a step
or of a checkpoint save. The other rank stops within 60 s instead of waiting in a collective,
with one line naming the dead rank, the step and the checkpoint to resume from, and the
half-written checkpoint never replaces the last complete one."""

import os
import shutil
import time

import pytest

from tests.helpers.launch import ROOT, free_port, launch, read_metrics, short_run

pytestmark = [pytest.mark.e2e, pytest.mark.distributed]


def command(root, corpus, steps: int) -> list[str]:
    deepspeed = [shutil.which("deepspeed"), "--log_level=warning", "--num_gpus", "2", "--master_port", str(free_port())]
    return [*deepspeed, "launch/pretrain.py", *short_run(root, "dead", corpus, steps)]


def run_with_fault(tmp_path, corpus, fault: str):
    proc = launch(command(tmp_path, corpus, 10), ROOT, env={"BIGTRAIN_FAULT": fault}, timeout=300)
    ended = time.time()
    run = tmp_path / "dead"
    # the last sign of life before the kill: rank 0's last metrics row
    return proc, ended - os.path.getmtime(run / "metrics.jsonl"), run


def test_a_rank_killed_mid_step_stops_the_other_naming_it(corpus, cache_dir, tmp_path):
    proc, waited, run = run_with_fault(tmp_path, corpus, "kill_mid_step:6")
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if "bigtrain: error:" in line]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert errors[0].startswith(
        "bigtrain: error: rank 1 died or stopped responding (during step 6; last completed step 5; "
        "the latest complete checkpoint is step_00000004): relaunch the same command to resume from it"
    ), errors[0]
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3, 4, 5]
    assert waited < 60, f"the surviving rank took {waited:.0f} s to stop"


def test_a_rank_killed_mid_save_keeps_the_last_complete_checkpoint(corpus, cache_dir, tmp_path):
    proc, waited, run = run_with_fault(tmp_path, corpus, "kill_mid_save:8")
    assert proc.returncode != 0 and waited < 60
    assert (
        "bigtrain: error: rank 1 died or stopped responding (while saving the checkpoint of step 8; last "
        "completed step 8; the latest complete checkpoint is step_00000004)" in proc.stderr
    ), proc.stderr[-3000:]
    ckpts = run / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step_00000004" and not (ckpts / "step_00000008").exists()
    resumed = launch(command(tmp_path, corpus, 10), ROOT, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {ckpts / 'step_00000004'} at step 4" in resumed.stdout
    assert [r["step"] for r in read_metrics(run)] == list(range(1, 11))


def test_a_hung_rank_is_named_after_the_collective_timeout(corpus, cache_dir, tmp_path):
    """A rank that stops answering without dying (SIGSTOP) breaks no connection: only the
    collective timeout (parallel.collective_timeout_s, here 15 s) ends the wait. The survivor then
    SIGKILLs the hung rank on its host, so the job ends without the launcher's 30 s SIGTERM grace
    (which a stopped process would sit out)."""
    cmd = [*command(tmp_path, corpus, 10), "parallel.collective_timeout_s=15"]
    started = time.time()
    proc = launch(cmd, ROOT, env={"BIGTRAIN_FAULT": "hang_mid_step:6"}, timeout=300)
    run = tmp_path / "dead"
    waited = time.time() - os.path.getmtime(run / "metrics.jsonl")
    assert proc.returncode != 0
    assert (
        "bigtrain: error: rank 1 died or stopped responding (during step 6; last completed step 5; "
        "the latest complete checkpoint is step_00000004; rank 1 hung on this host, now killed)" in proc.stderr
    ), proc.stderr[-3000:]
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3, 4, 5]
    took = f"the job took {waited:.0f} s to end after the hang ({time.time() - started:.0f} s in all)"
    assert 15 <= waited < 45, took
