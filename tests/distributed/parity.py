"""Run one parallel layout on warm gloo workers and read back what it logged.

The settings are the presets' defaults (gradient clipping at 1.0, the default optimizer and
schedule, evaluation, the end-of-run sample), on a small model and 20 steps; only the global
batch of 8 is fixed so that every layout accumulates gradients (2-4 micro-batches per step).
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import bank, pool
from tests.helpers.launch import read_metrics

STEPS = 20
GPT = ["model=tiny", "model.n_layers=4", "model.d_model=64", "model.n_heads=4", "model.seq_len=32"]
LLAMA = [
    "model=tiny_llama",
    "model.n_layers=4",
    "model.d_model=64",
    "model.n_heads=4",
    "model.n_kv_heads=2",
    "model.seq_len=32",
]
GPT_UNTIED = [*GPT, "model.tie_embeddings=false"]
# 4 routed experts, top-2, in every block (dropless); with a capacity factor of 1, tokens are dropped.
MOE = [*GPT, "model.moe.experts=4", "model.moe.top_k=2", "model.moe.ffn_hidden=128"]
MOE_CAPACITY = [*MOE, "model.moe.capacity_factor=1.0"]
COMMON = [
    "data=shakespeare_char",
    f"trainer.max_steps={STEPS}",
    "trainer.global_batch_size=8",
    "trainer.eval_interval=5",
    "trainer.eval_iters=2",
    "precision=fp32",
    "logging.progress_bar=false",
    "logging.tensorboard=false",
]
# name: (ranks, overrides); the global batch of 8 is the same in every layout.
LAYOUTS = {
    "single": (1, ["parallel=single", "trainer.micro_batch_size=4"]),
    "zero1_dp2": (2, ["parallel=zero1", "trainer.micro_batch_size=2"]),
    "zero2_dp2": (2, ["parallel=zero2", "trainer.micro_batch_size=2"]),
    "zero3_dp2": (2, ["parallel=zero3", "trainer.micro_batch_size=2"]),
    "tp2": (2, ["parallel=tp2", "trainer.micro_batch_size=4"]),
    "tp2_sp": (2, ["parallel=tp2_sp", "trainer.micro_batch_size=4"]),
    "pp2": (2, ["parallel=pp2", "trainer.micro_batch_size=2"]),
    # Pipeline stages on ZeRO 0: bigtrain's own clipping over both stages.
    "pp2_zero0": (2, ["parallel=pp2", "parallel.zero_stage=0", "trainer.micro_batch_size=2"]),
    "tp2_pp2": (4, ["parallel=tp2_pp2", "trainer.micro_batch_size=2"]),
    "tp2_dp2_zero1": (4, ["parallel=tp2", "parallel.zero_stage=1", "trainer.micro_batch_size=2"]),
    # Activation checkpointing recomputes the same forward, so it keeps parity too.
    "tp2_sp_checkpointed": (
        2,
        ["parallel=tp2_sp", "trainer.micro_batch_size=4", "trainer.activation_checkpointing=full"],
    ),
    "pp2_checkpointed": (2, ["parallel=pp2", "trainer.micro_batch_size=2", "trainer.activation_checkpointing=full"]),
}
# Worst figures per layout and precision, printed at the end of the session (tests/conftest.py).
REPORT: dict[str, dict[str, float]] = {}


def run_layout_raw(
    corpus: Path, out: Path, ranks: int, overrides: list[str], timeout: int = 600, env: dict | None = None
):
    """Train on `ranks` warm gloo workers (tests/helpers/pool.py: bigtrain's entry point with the
    deepspeed launcher's rank environment) in run directory out/run."""
    args = [f"data.path={corpus}", f"hydra.run.dir={out / 'run'}", *COMMON, *overrides]
    return pool.run(ranks, args, timeout=timeout, env=env)


def run_layout(corpus: Path, tmp_path_factory, ranks: int, overrides: list[str]) -> tuple[list[dict], dict, Path]:
    """Train STEPS steps with `ranks` processes, or take the run bank's copy of the same run
    (tests/helpers/bank.py); return metrics.jsonl rows, summary.json and the run directory."""
    run_dir, proc = bank.trained(ranks, [f"data.path={corpus}", *COMMON, *overrides], tmp_path_factory)
    rows = read_metrics(run_dir) if (run_dir / "metrics.jsonl").exists() else []
    if proc.returncode != 0 or len(rows) != STEPS:
        raise AssertionError(
            f"{overrides} with {ranks} ranks wrote {len(rows)} of {STEPS} steps "
            f"(exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return rows, json.loads((run_dir / "summary.json").read_text()), run_dir


def worst_relative_difference(a: list[dict], b: list[dict], key: str = "loss") -> float:
    pairs = [(x[key], y[key]) for x, y in zip(a, b) if key in x or key in y]
    assert len(a) == len(b) and pairs, f"nothing to compare for {key}"
    return max(abs(x - y) / abs(y) for x, y in pairs)
