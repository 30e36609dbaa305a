"""`launch/plan.py` and `trainer.dry_run=true`: the planner's output from the command line, with
no process group, no data build and no run directory."""

import re

import pytest

from tests.helpers.launch import PYTHON, ROOT, launch

pytestmark = pytest.mark.e2e


def test_plan_lists_fitting_layouts_and_why_the_others_fail():
    args = ["model=llama_7b", "precision=bf16", "trainer.micro_batch_size=1", "trainer.global_batch_size=64"]
    cluster = ["cluster.nodes=2", "cluster.gpus_per_node=8", "cluster.gpu_memory_gb=40"]
    proc = launch([PYTHON, "launch/plan.py", *args, *cluster], ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fit = re.search(r"(\d+) of (\d+) layouts fit, fastest first:", proc.stdout)
    assert fit and 0 < int(fit.group(1)) < int(fit.group(2)), proc.stdout
    assert "more than 40 GB" in proc.stdout and "cannot combine with pipeline" in proc.stdout
    assert "plan for tp" in proc.stdout and "tokens/s" in proc.stdout


def test_plan_refuses_an_unknown_cluster_key():
    proc = launch([PYTHON, "launch/plan.py", "model=tiny", "cluster.gpus=8"], ROOT, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("bigtrain: error: unknown config key 'cluster.gpus'")


def test_dry_run_prints_the_plan_and_starts_nothing(tmp_path):
    args = ["model=tiny", "parallel=single", f"run.root={tmp_path}", "run.name=dry", "trainer.dry_run=true"]
    proc = launch([PYTHON, "launch/pretrain.py", *args], ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "plan for tp1 pp1 dp1 zero0" in proc.stdout
    total = re.search(r"total\s+([\d.]+) GB", proc.stdout)
    assert total and 0.5 < float(total.group(1)) < 5, proc.stdout
    assert not (tmp_path / "dry" / "checkpoints").exists() and not (tmp_path / "dry" / "metrics.jsonl").exists()
