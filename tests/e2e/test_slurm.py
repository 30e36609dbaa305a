"""launch/slurm/ on a real one-node Slurm: a 2-task job trains one 2-rank run (the same losses as
the deepspeed launcher and as mpirun), and a job signalled as on preemption checkpoints, requeues
itself and resumes to the losses of an uninterrupted run."""

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers.launch import PYTHON, ROOT, deepspeed_command, free_port, launch, read_metrics
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


def sbatch(env, name: str, root, corpus, wait: bool, extra=()) -> subprocess.CompletedProcess:
    """Submit launch/slurm/pretrain.sbatch with 2 CPU tasks, as its header's comment shows (the
    job takes the environment `env`). `wait`: return once the job has finished, with its exit code
    as the returncode (what `sbatch --wait` does, but polled every 0.3 s: `--wait` looks at the
    job every 10 s, which was most of a short job's time)."""
    args = ["sbatch", "--parsable", f"--job-name={name}", "--gpus-per-node=0", "--ntasks-per-node=2"]
    args += [f"--output={root}/slurm-%x-%j.out"]  # not into the checkout
    args += ["--cpus-per-task=1", "launch/slurm/pretrain.sbatch"]
    args += [f"run.root={root}", f"data.path={corpus}", *ARGS, *extra]
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    if not wait or proc.returncode != 0:
        return proc
    job = proc.stdout.strip().split(";")[0]
    info = wait_finished(job, env, timeout=900, log=Path(root) / name / f"slurm-{job}.out")
    code = 0 if info["JobState"] == "COMPLETED" else int(info.get("ExitCode", "1:0").split(":")[0]) or 1
    return subprocess.CompletedProcess(args, code, proc.stdout, proc.stderr)


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
    # Rank 1 exits 10 s after rank 0, so srun --kill-on-bad-exit kills it (KillWait=2) and reports
    # the kill instead of 75: the script must requeue by bigtrain's stopped.json.
    proc = sbatch({**slurm, "BIGTRAIN_FAULT": "slow_exit:*"}, "preempted", tmp_path, corpus, wait=False)
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
    log_file = run / f"slurm-{job}.out"
    requeued = wait_for(job, slurm, 120, lambda info: info["JobState"] == "PENDING", log_file)
    # Slurm gives the Reason (BeginTime) only at its next scheduling pass: None until then
    assert (run / "stopped.json").is_file() and requeued.get("Restarts") == "1", requeued
    assert requeued.get("Reason") in ("BeginTime", "None"), requeued
    # slurmd refuses a job credential issued in the second it revoked the job's previous one
    # ("Job credential revoked"); Slurm's own hold of the requeue avoids that, so wait it out here.
    time.sleep(3)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=slurm, timeout=60, check=True)
    info = wait_finished(job, slurm, timeout=600, log=log_file)
    log = log_file.read_text()
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", log[-3000:]
    assert "requeueing job" in log and f"job {job} restart 1" in log, log[-3000:]
    first = log.split("requeueing job")[0]
    assert "task 0: Exited with exit code 75" in first and "task 1: Killed" in first, first[-3000:]
    stopped_at = int(log.split("stopped by a signal after step ")[1].split(";")[0])
    assert 3 <= stopped_at < STEPS and f"at step {stopped_at} " in log and "resuming from" in log
    assert not (run / "stopped.json").exists()  # the resumed run took it away
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    whole = read_metrics(srun_run[0])
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in whole], rel=1e-6)
    # a new job (new id) with the same name continues the same run
    again = sbatch(slurm, "preempted", tmp_path, corpus, wait=True, extra=[f"trainer.max_steps={STEPS + 2}"])
    second = again.stdout.strip().split(";")[0]
    log = (run / f"slurm-{second}.out").read_text()
    assert again.returncode == 0 and second != job, log[-3000:]
    assert f"resuming from {run / 'checkpoints' / f'step_{STEPS:08d}'} at step {STEPS}" in log, log[-3000:]
    assert [r["step"] for r in read_metrics(run)] == list(range(1, STEPS + 3))


def test_mpirun_two_ranks_train_one_run(srun_run, corpus, tmp_path):
    """mpirun's OMPI_* variables make one 2-rank world, which trains exactly like the srun job."""
    mpirun = shutil.which("mpirun")
    if not mpirun:
        pytest.skip("Open MPI is not installed: run tests/slurm_install.sh as root")
    command = [mpirun, "--allow-run-as-root", "--oversubscribe", "-np", "2", "-x", "MASTER_ADDR=127.0.0.1"]
    command += ["-x", f"MASTER_PORT={free_port()}", PYTHON, "launch/pretrain.py", f"data.path={corpus}"]
    proc = launch([*command, f"hydra.run.dir={tmp_path / 'mpi'}", *ARGS], ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "layout: world 2 = tensor 1 × pipeline 1 × data 2" in proc.stdout
    rows, theirs = read_metrics(tmp_path / "mpi"), read_metrics(srun_run[0])
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in theirs], rel=1e-6)
