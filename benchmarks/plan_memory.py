"""The planner's memory prediction against real runs, on every data-parallel and tensor-parallel
layout of 1-2 CPU ranks.

    python benchmarks/plan_memory.py --data-path ../shared/data/tinyshakespeare.txt

gpt2_124m's shape (model states dominate; sequence 128, micro-batch 1, global batch 2, a
character vocabulary) trains 3 fp32 steps through the real launcher per layout, with no checkpoint.
Rank 0's peak resident memory (metrics.jsonl's mem_gb at the last step, the process's ru_maxrss) is
compared with the planner's prediction for that rank (`bigtrain/parallel/plan.py`, CPU fixed overhead).
The ranks run with glibc's mmap threshold fixed at 1 MB (ALLOCATOR), so the peak is live memory.
`tests/e2e/test_plan_memory.py` runs the same comparison (`compare`, here) on the layouts within 10%.
Writes benchmarks/results/plan_memory.{json,md}.

    python benchmarks/plan_memory.py --data-path ../shared/data/tinyshakespeare.txt --layouts pp2 --repeat 10

runs the named layouts several times each and writes every run's peak, with the spread, to
benchmarks/results/plan_memory_repeat.{json,md}; with --busy-core, a spinning process keeps one
core busy meanwhile (as another job would) and the results go to plan_memory_repeat_busy.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from report import PYTHON, RESULTS, command, deepspeed_command, launch, read_metrics  # beside this file

from bigtrain.config.hydra import compose
from bigtrain.parallel.plan import CPU_OVERHEAD_GB, GB, Cluster, Plan, plan

RUN = [
    "model=gpt2_124m",
    "model.seq_len=128",
    "data=shakespeare_char",
    "trainer.micro_batch_size=1",
    "trainer.global_batch_size=2",
    "trainer.max_steps=3",
    "trainer.save_at_end=false",  # the peak is the step's; writing 1.5 GB of checkpoint only takes time
    "trainer.eval_interval=1000",
    "trainer.eval_iters=1",
    "trainer.sample_tokens=0",
    "logging.progress_bar=false",
    "logging.tensorboard=false",
]
# glibc's mmap threshold fixed at 1 MB: a freed block over 1 MB leaves the resident set at once, so
# the peak is the peak of live tensors and the same from run to run (the default threshold rises as
# large blocks are freed, and what stays resident in per-thread arenas moved pp2's peak by 0.22 GB).
ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": "1048576"}
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
    proc = launch([*cmd, *args], timeout=600, env=ALLOCATOR)
    measured = read_metrics(root / "plan")[-1]["mem_gb"] * 2**30  # ru_maxrss, in bytes
    vocab = int(next(line for line in proc.stdout.splitlines() if "vocab " in line).split("vocab ")[1].split(";")[0])
    cfg = compose([a for a in args if not a.startswith("run.")])
    cluster = Cluster(nodes=1, gpus_per_node=ranks, gpu_memory_gb=1000, overhead_gb=CPU_OVERHEAD_GB)
    return measured, plan(cfg, cluster, vocab=vocab)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-path", type=Path, required=True)
    parser.add_argument("--layouts", nargs="+", choices=list(LAYOUTS), default=list(LAYOUTS))
    parser.add_argument("--repeat", type=int, default=1, help="runs per layout")
    parser.add_argument("--busy-core", action="store_true", help="keep one core busy with a spinning process meanwhile")
    args = parser.parse_args()
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy_core else None
    try:
        rows = measure(args)
    finally:
        if spinner:
            spinner.kill()
    write(rows, args.repeat, args.busy_core)


def measure(args) -> list[dict]:
    rows = []
    for name in args.layouts:
        measured = []
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory(prefix=f"plan-{name}-") as root:
                peak, predicted = compare(name, args.data_path.resolve(), Path(root))
            measured.append(peak)
            print(name, round(peak / GB, 3), flush=True)
        peaks = [round(m / GB, 3) for m in measured]
        rows.append(
            {
                "layout": name,
                "measured_gb": peaks[0] if args.repeat == 1 else peaks,
                "predicted_gb": round(predicted.total_bytes / GB, 3),
                "ratio": round(predicted.total_bytes / measured[0], 3),
                "predicted_parts_gb": {k: round(v / GB, 3) for k, v in predicted.memory.items()},
            }
        )
    return rows


def write(rows: list[dict], repeat: int, busy_core: bool) -> None:
    out = RESULTS
    stem = "plan_memory" if repeat == 1 else "plan_memory_repeat" + ("_busy" if busy_core else "")
    (out / f"{stem}.json").write_text(json.dumps({"command": command(), "run": RUN, "results": rows}, indent=1) + "\n")
    if repeat == 1:
        lines = ["| layout | measured GB | predicted GB | predicted / measured |", "|---|---|---|---|"]
        lines += [f"| {r['layout']} | {r['measured_gb']} | {r['predicted_gb']} | {r['ratio']:.2f}× |" for r in rows]
    else:
        lines = ["| layout | runs | measured GB, each run | lowest - highest | predicted GB | predicted / measured |"]
        lines.append("|---|---|---|---|---|---|")
        for r in rows:
            low, high, pred = min(r["measured_gb"]), max(r["measured_gb"]), r["predicted_gb"]
            each = ", ".join(map(str, r["measured_gb"]))
            ratios = f"{pred / high:.2f}× - {pred / low:.2f}×"
            lines.append(f"| {r['layout']} | {len(r['measured_gb'])} | {each} | {low} - {high} | {pred} | {ratios} |")
    (out / f"{stem}.md").write_text("\n".join([f"`{command()}`", "", *lines]) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
