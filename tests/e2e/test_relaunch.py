"""The same command twice: a run stopped by SIGTERM continues from its checkpoint when relaunched
(its directory comes from run.name, not from the launch time), ends with the weights of an
uninterrupted run, and a third launch says the run is complete instead of training again."""

import pytest
import torch

from bigtrain.train.consolidated import read_tensors
from tests.helpers.launch import PYTHON, ROOT, launch, read_metrics

pytestmark = pytest.mark.e2e

LAUNCHERS = {
    "python": [PYTHON],
    "torchrun": [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", "1"],
}


def command(launcher: str, root, corpus) -> list[str]:
    return [
        *LAUNCHERS[launcher],
        "launch/pretrain.py",
        f"run.root={root}",
        "run.name=relaunch",
        "model=tiny",
        "model.n_layers=2",
        "model.seq_len=32",
        "model.dropout=0.1",
        "data=shakespeare_char",
        f"data.path={corpus}",
        "trainer.max_steps=8",
        "trainer.micro_batch_size=4",
        "trainer.global_batch_size=8",
        "trainer.eval_interval=4",
        "trainer.eval_iters=1",
        "trainer.sample_tokens=0",
        "logging.progress_bar=false",
        "logging.tensorboard=false",
    ]


@pytest.fixture(scope="module")
def uninterrupted(corpus, cache_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("whole")
    proc = launch(command("python", root, corpus), ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "relaunch"


# A plain `python` relaunch after SIGKILL is tests/e2e/test_random_kills.py's one-process case.
@pytest.mark.parametrize("launcher", ["torchrun"])
def test_same_command_resumes_after_sigterm(launcher, uninterrupted, corpus, tmp_path):
    args = command(launcher, tmp_path, corpus)
    stopped = launch(args, ROOT, env={"BIGTRAIN_FAULT": "after_step:4"})
    assert stopped.returncode != 0
    assert "relaunch the same command (run.name=relaunch) to continue" in stopped.stdout, stopped.stdout[-2000:]
    resumed = launch(args, ROOT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout and "at step 4" in resumed.stdout
    run = tmp_path / "relaunch"
    assert [r["step"] for r in read_metrics(run)] == list(range(1, 9))
    assert [r["loss"] for r in read_metrics(run)] == [r["loss"] for r in read_metrics(uninterrupted)]
    ours = read_tensors(run / "checkpoints" / "step_00000008" / "bigtrain")
    theirs = read_tensors(uninterrupted / "checkpoints" / "step_00000008" / "bigtrain")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    again = launch(args, ROOT)
    assert again.returncode == 0 and "run relaunch is already complete at step 8" in again.stdout
    assert [r["step"] for r in read_metrics(run)] == list(range(1, 9))  # nothing trained twice
