"""Run one parallel layout through the real deepspeed launcher and read back its losses."""
from __future__ import annotations

import shutil
from pathlib import Path

from bigtrain.parallel.state import free_port
from tests.conftest import ROOT, launch, read_metrics

STEPS = 20
GPT = ["model=tiny", "model.n_layers=4", "model.d_model=64", "model.n_heads=4", "model.seq_len=32"]
LLAMA = ["model=tiny_llama", "model.n_layers=4", "model.d_model=64", "model.n_heads=4", "model.n_kv_heads=2",
         "model.seq_len=32"]
COMMON = ["data=shakespeare_char", f"trainer.max_steps={STEPS}", "trainer.global_batch_size=8",
          f"trainer.eval_interval={STEPS}", "trainer.eval_iters=1", "trainer.sample_tokens=0",
          "precision=fp32", "model.dropout=0.0", "optim.warmup_steps=2", "optim.lr=1e-3",
          "logging.progress_bar=false", "logging.tensorboard=false"]


def run_layout_raw(corpus: Path, out: Path, ranks: int, overrides: list[str], timeout: int = 600,
                   env: dict | None = None):
    """Launch `ranks` processes through the deepspeed launcher in run directory out/run."""
    args = [shutil.which("deepspeed"), "--num_gpus", str(ranks), "--master_port", str(free_port()),
            "launch/pretrain.py", f"data.path={corpus}", f"hydra.run.dir={out / 'run'}", *COMMON, *overrides]
    return launch(args, ROOT, timeout=timeout, env=env)


def run_layout(corpus: Path, out: Path, ranks: int, overrides: list[str], timeout: int = 600) -> list[dict]:
    """Train STEPS steps with `ranks` processes; return metrics.jsonl rows."""
    run_dir = out / "run"
    proc = run_layout_raw(corpus, out, ranks, overrides, timeout)
    rows = read_metrics(run_dir) if (run_dir / "metrics.jsonl").exists() else []
    if len(rows) != STEPS:
        raise AssertionError(f"{overrides} with {ranks} ranks wrote {len(rows)} of {STEPS} steps "
                             f"(exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return rows


def worst_relative_difference(a: list[dict], b: list[dict], key: str = "loss") -> float:
    return max(abs(x[key] - y[key]) / abs(y[key]) for x, y in zip(a, b))
