"""Run directories: one job at a time, and fresh starts that move the old run aside."""

import json
import os

import pytest

from bigtrain.config import Config, ConfigError, validate
from bigtrain.config.hydra import compose
from bigtrain.config.schema import RunConfig
from bigtrain.train.rundir import LOCK_FILE, RunDirError, RunLock, set_aside


def test_second_job_on_a_run_directory_is_refused_naming_the_first(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4711")
    first = RunLock(tmp_path / "run")
    first.acquire()
    holder = json.loads((tmp_path / "run" / LOCK_FILE).read_text())
    assert holder["pid"] == os.getpid() and holder["slurm_job_id"] == "4711"
    with pytest.raises(RunDirError, match=r"is in use by another job \(Slurm job 4711, pid \d+ on .*\): wait"):
        RunLock(tmp_path / "run").acquire()
    first.release()  # a finished (or crashed: the kernel drops the lock) job frees the directory
    again = RunLock(tmp_path / "run")
    again.acquire()
    again.release()


def test_fresh_start_moves_the_previous_run_aside(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints" / "step_00000004").mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    (run / ".hydra").mkdir()
    aside = set_aside(run, run / "checkpoints")
    assert aside.parent == run and aside.name.startswith("replaced-")
    assert (aside / "checkpoints" / "step_00000004").is_dir() and (aside / "metrics.jsonl").is_file()
    assert not (run / "checkpoints").exists() and (run / ".hydra").is_dir()
    assert set_aside(run, run / "checkpoints") is None  # nothing left to move


def test_run_directory_derives_from_the_name(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_NAME", raising=False)
    assert compose([]).run.name == "tiny-stdlib"
    assert compose(["model=gpt2_124m", "data=text"]).run.name == "gpt2_124m-text"
    monkeypatch.setenv("SLURM_JOB_NAME", "gpt-web")  # sbatch --job-name: a new job of that name resumes
    assert compose([]).run.name == "gpt-web"


@pytest.mark.parametrize("name", ["", "/abs", "../up", "a/../../b"])
def test_run_names_stay_inside_the_root(name):
    with pytest.raises(ConfigError, match=r"run.name=.* must be a relative name inside run.root"):
        validate(Config(run=RunConfig(name=name)), world_size=1)
