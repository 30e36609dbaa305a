"""The planner against a real run: one layout of gpt2_124m's shape trained for 3 fp32 steps, and
rank 0's measured peak next to the planner's prediction (tests/e2e/test_plan_memory.py and
benchmarks/plan_memory.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

from bigtrain.config.hydra import compose
from bigtrain.parallel.plan import CPU_OVERHEAD_GB, Cluster, Plan, plan
from tests.helpers.launch import PYTHON, ROOT, deepspeed_command, launch, read_metrics

RUN = [
    "model=gpt2_124m",
    "model.seq_len=128",
    "data=shakespeare_char",
    "trainer.micro_batch_size=1",
    "trainer.global_batch_size=2",
    "trainer.max_steps=3",
    "trainer.eval_interval=1000",
    "trainer.eval_iters=1",
    "trainer.sample_tokens=0",
    "logging.progress_bar=false",
    "logging.tensorboard=false",
]
LAYOUTS = {  # name -> (ranks, overrides)
    "single": (1, ["parallel=single"]),
    "zero1_dp2": (2, ["parallel=zero1"]),
    "zero2_dp2": (2, ["parallel=zero2"]),
    "zero3_dp2": (2, ["parallel=zero3"]),
    "tp2": (2, ["parallel=tp2"]),
    "pp2": (2, ["parallel=pp2"]),
    "tp2_dp2_zero1": (4, ["parallel=tp2", "parallel.zero_stage=1"]),
}


def compare(name: str, corpus: Path, root: Path) -> tuple[float, Plan]:
    """Train layout `name` under `root`; (rank 0's measured peak bytes, the planner's Plan)."""
    ranks, overrides = LAYOUTS[name]
    args = [*RUN, *overrides, f"data.path={corpus}", f"run.root={root}", "run.name=plan"]
    cmd = [PYTHON, "launch/pretrain.py"] if ranks == 1 else deepspeed_command(ranks)
    proc = launch([*cmd, *args], ROOT, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    measured = read_metrics(root / "plan")[-1]["mem_gb"] * 2**30  # ru_maxrss, in bytes
    vocab = int(next(line for line in proc.stdout.splitlines() if "vocab " in line).split("vocab ")[1].split(";")[0])
    cfg = compose([a for a in args if not a.startswith("run.")])
    cluster = Cluster(nodes=1, gpus_per_node=ranks, gpu_memory_gb=1000, overhead_gb=CPU_OVERHEAD_GB)
    shutil.rmtree(root / "plan" / "checkpoints", ignore_errors=True)
    return measured, plan(cfg, cluster, vocab=vocab)
