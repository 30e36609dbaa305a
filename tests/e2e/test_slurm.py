"""launch/slurm/ on a real one-node Slurm: a 2-task job trains one 2-rank run (the same losses as
the deepspeed launcher), and a job signalled as on preemption checkpoints, requeues itself and
resumes to the losses of an uninterrupted run."""

import json
import subprocess
import time

import pytest

from tests.helpers.launch import ROOT, deepspeed_command, launch, read_metrics
from tests.helpers.slurm import start_cluster, stop_cluster, wait_finished, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slurm]

STEPS = 30
ARGS = [
    "model=tiny",
    "model.n_layers=2",
    "model.seq_len=64",
    "data=shakespeare_char",
    f"trainer.max_steps={STEPS}",
    "trainer.micro_batch_size=4",
    "trainer.global_batch_size=16",
    "trainer.eval_interval=10",
    "trainer.eval_iters=1",
    "trainer.sample_tokens=0",
    "logging.progress_bar=false",
    "logging.tensorboard=false",
]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    env = start_cluster(tmp_path_factory.mktemp("slurm"))
    yield env
    stop_cluster(env)


def sbatch(env, name: str, root, corpus, wait: bool) -> subprocess.CompletedProcess:
    """Submit launch/slurm/pretrain.sbatch with 2 CPU tasks, as its header's comment shows."""
    args = ["sbatch", "--parsable", f"--job-name={name}", "--gpus-per-node=0", "--ntasks-per-node=2"]
    args += ["--cpus-per-task=1", *(["--wait"] if wait else []), "launch/slurm/pretrain.sbatch"]
    args += [f"run.root={root}", f"data.path={corpus}", *ARGS]
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def srun_run(slurm, corpus, cache_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("srun")
    proc = sbatch(slurm, "uninterrupted", root, corpus, wait=True)
    job = proc.stdout.strip().split(";")[0]
    run = root / "uninterrupted"
    log = (run / f"slurm-{job}.out").read_text() if (run / f"slurm-{job}.out").is_file() else proc.stderr
    assert proc.returncode == 0, log[-3000:]
    return run, job, log


def test_two_task_job_trains_one_two_rank_run(srun_run, corpus, tmp_path):
    run, job, log = srun_run
    assert "layout: world 2 = tensor 1 × pipeline 1 × data 2" in log  # one world, not two of one
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert (run / "checkpoints" / f"step_{STEPS:08d}" / "bigtrain" / "meta.json").is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["val_loss"] < rows[0]["loss"] - 0.5 and len(summary["peak_mem_gb_per_rank"]) == 2
    # the same run through the deepspeed launcher: the same losses
    ds = launch([*deepspeed_command(2), f"data.path={corpus}", f"hydra.run.dir={tmp_path / 'ds'}", *ARGS], ROOT)
    assert ds.returncode == 0, ds.stderr[-3000:]
    theirs = read_metrics(tmp_path / "ds")
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in theirs], rel=1e-6)


def test_preempted_job_checkpoints_requeues_and_resumes(slurm, srun_run, corpus, tmp_path):
    proc = sbatch(slurm, "preempted", tmp_path, corpus, wait=False)
    assert proc.returncode == 0, proc.stderr
    job, run = proc.stdout.strip().split(";")[0], tmp_path / "preempted"
    deadline = time.time() + 300
    while not ((run / "metrics.jsonl").is_file() and len(read_metrics(run)) >= 3):
        assert time.time() < deadline, "the job never started training"
        time.sleep(0.2)
    # what Slurm does before the time limit (--signal=USR1@300) or on preemption
    subprocess.run(["scancel", "--signal=USR1", job], env=slurm, check=True, timeout=60)
    # The job checkpoints, exits 75 and requeues itself. Slurm holds a requeued job about two
    # minutes (its begin time); the test lets it start at once.
    wait_for(job, slurm, 120, lambda info: info["JobState"] == "PENDING" and info.get("Reason") == "BeginTime")
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=slurm, timeout=60, check=True)
    info = wait_finished(job, slurm, timeout=600)
    log = (run / f"slurm-{job}.out").read_text()
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", log[-3000:]
    assert "requeueing job" in log and f"job {job} restart 1" in log, log[-3000:]
    stopped_at = int(log.split("stopped by a signal after step ")[1].split(";")[0])
    assert 3 <= stopped_at < STEPS and f"at step {stopped_at} " in log and "resuming from" in log
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    whole = read_metrics(srun_run[0])
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in whole], rel=1e-6)
