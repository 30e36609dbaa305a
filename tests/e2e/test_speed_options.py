"""The speed options through bigtrain's entry point (on the warm workers): trainer.compile trains like eager (fp32 in
one process, block by block and the whole model; bf16 under ZeRO-2 over two ranks, with the
presets' clipping, eval and sampling),
and trainer.threads / pin_cores set what they say."""

import json
import os
import subprocess

import pytest

from tests.helpers import pool
from tests.helpers.launch import PYTHON, ROOT, read_metrics

pytestmark = pytest.mark.pool

ARGS = [
    "model=tiny",
    "model.n_layers=2",
    "model.d_model=128",
    "model.seq_len=64",
    "data=shakespeare_char",
    "trainer.max_steps=12",
    "trainer.micro_batch_size=4",
    "trainer.global_batch_size=8",
    "trainer.eval_interval=6",
    "trainer.eval_iters=2",
    "trainer.sample_tokens=40",
    "trainer.save_at_end=false",
    "logging.progress_bar=false",
    "logging.tensorboard=false",
]


def train(ranks: int, corpus, run_dir, *extra: str) -> tuple[list[dict], str]:
    """On the warm workers: each run compiles its own graphs (run() resets dynamo when it ends)."""
    proc = pool.run(ranks, [f"data.path={corpus}", f"hydra.run.dir={run_dir}", *ARGS, *extra], timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return read_metrics(run_dir), proc.stdout


@pytest.mark.parametrize(
    "ranks,extra,rel",
    [
        (1, ["precision=fp32"], 1e-4),
        (1, ["precision=fp32", "trainer.compile_scope=model"], 1e-4),
        (2, ["parallel=zero2", "precision=bf16"], 2e-2),
    ],
    ids=["single-fp32", "single-fp32-whole-model", "zero2_dp2-bf16"],
)
def test_compiled_trains_like_eager(ranks, extra, rel, corpus, cache_dir, tmp_path):
    eager, _ = train(ranks, corpus, tmp_path / "eager", *extra)
    compiled, out = train(ranks, corpus, tmp_path / "compiled", *extra, "trainer.compile=true")
    whole = "trainer.compile_scope=model" in extra
    assert ("torch.compile of the whole model" if whole else "torch.compile per transformer block") in out
    graphs = int(out.split("torch.compile: ")[1].split(" graphs")[0])
    assert graphs >= 2, out[-2000:]  # at least the training forward and the eval forward
    assert [r["step"] for r in compiled] == [r["step"] for r in eager] == list(range(1, 13))
    losses = lambda rows: [r["loss"] for r in rows]  # noqa: E731
    assert losses(compiled) == pytest.approx(losses(eager), rel=rel)
    vals = lambda rows: [r["val_loss"] for r in rows if "val_loss" in r]  # noqa: E731
    assert len(vals(eager)) == 2 and vals(compiled) == pytest.approx(vals(eager), rel=rel)
    assert losses(compiled)[-1] < losses(compiled)[0] - 0.5  # it learns
    assert "sample:" in out  # sampling runs eager beside the compiled blocks


def test_threads_and_pinned_cores_per_rank():
    code = "import os; from bigtrain.entry.process import set_threads; print(set_threads(None, True)); "
    code += "print(sorted(os.sched_getaffinity(0)))"
    cores = sorted(os.sched_getaffinity(0))
    share = max(1, len(cores) // 2)
    for local_rank in (0, 1):
        env = {**os.environ, "LOCAL_RANK": str(local_rank), "LOCAL_WORLD_SIZE": "2"}
        proc = subprocess.run([PYTHON, "-c", code], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr
        said, mine = proc.stdout.strip().splitlines()
        expected = cores[(local_rank * share) % len(cores) :][:share]
        assert json.loads(mine) == expected, (said, mine)
        assert said.startswith(f"{share} threads per rank, pinned to cores {expected[0]}-{expected[-1]}")
    proc = subprocess.run(
        [
            PYTHON,
            "-c",
            "import torch; from bigtrain.entry.process import set_threads; set_threads(1, False); "
            "print(torch.get_num_threads())",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.stdout.strip() == "1", proc.stderr
