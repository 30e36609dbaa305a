"""Running bigtrain's entry points in subprocesses and reading what they wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bigtrain.parallel.state import free_port  # noqa: F401  (tests import it from here)

ROOT = Path(__file__).resolve().parents[2]
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
PYTHON = sys.executable

sys.path.insert(0, str(ROOT / "benchmarks"))  # tests may import the benchmarks' helpers, not the reverse
from report import deepspeed_command  # noqa: E402, F401  (one deepspeed launcher line for tests and benchmarks)


def launch(args: list[str], cwd: Path, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a launcher command from the repository root; fail with its output on timeout."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    try:
        return subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        out = (err.stdout or b"").decode(errors="replace") if isinstance(err.stdout, bytes) else err.stdout
        pytest.fail(f"{args} timed out after {timeout}s; output tail:\n{(out or '')[-3000:]}")


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def short_run(root, name: str, corpus, steps: int) -> list[str]:
    """The overrides of the fault tests' short run: a 2-layer tiny model on shakespeare_char named
    `name` under `root`, checkpointing and evaluating every 4 steps, no sample."""
    return [
        f"run.root={root}",
        f"run.name={name}",
        "model=tiny",
        "model.n_layers=2",
        "model.seq_len=32",
        "data=shakespeare_char",
        f"data.path={corpus}",
        f"trainer.max_steps={steps}",
        "trainer.micro_batch_size=4",
        "trainer.global_batch_size=8",
        "trainer.save_interval=4",
        "trainer.eval_interval=4",
        "trainer.eval_iters=1",
        "trainer.sample_tokens=0",
        "logging.progress_bar=false",
        "logging.tensorboard=false",
    ]


def assert_streamed(ckpt: Path) -> None:
    """`ckpt`'s consolidated copy was written one tensor at a time: no rank held more than twice
    its largest tensor at once (under tensor parallelism, the buffer every gather reuses plus one
    block of the joined tensor), a small part of the whole copy."""
    meta = json.loads((ckpt / "bigtrain" / "meta.json").read_text())
    copy = sum(f.stat().st_size for f in (ckpt / "bigtrain").glob("*.safetensors"))
    ranks = meta["consolidated_save"]["per_rank"]
    assert len(ranks) == meta["layout"]["world_size"]
    for rank, r in enumerate(ranks):
        assert 0 < r["peak_host_bytes"] <= 2 * r["largest_tensor_bytes"], (rank, r)
        assert r["peak_host_bytes"] < copy / 4, (rank, r, copy)
