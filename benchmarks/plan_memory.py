"""The planner's memory prediction against real runs, on every data-parallel and tensor-parallel
layout of 1-2 CPU ranks.

    python benchmarks/plan_memory.py --data-path ../shared/data/tinyshakespeare.txt

gpt2_124m's shape (model states dominate; sequence 128, micro-batch 1, global batch 2, a
character vocabulary) trains 3 fp32 steps through the real launcher per layout. Rank 0's peak
resident memory before the final checkpoint (metrics.jsonl's mem_gb, the process's ru_maxrss) is
compared with the planner's prediction for that rank (`bigtrain/parallel/plan.py`, CPU fixed overhead).
`tests/e2e/test_plan_memory.py` runs the same comparison on the layouts within 10%.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bigtrain.parallel.plan import GB  # noqa: E402
from tests.helpers.plan_memory import LAYOUTS, RUN, compare  # noqa: E402


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
            peak, predicted = compare(name, args.data_path.resolve(), Path(tempfile.mkdtemp(prefix=f"plan-{name}-")))
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
    command = "python benchmarks/plan_memory.py " + " ".join(sys.argv[1:])
    out = ROOT / "benchmarks" / "results"
    stem = "plan_memory" if repeat == 1 else "plan_memory_repeat" + ("_busy" if busy_core else "")
    (out / f"{stem}.json").write_text(json.dumps({"command": command, "run": RUN, "results": rows}, indent=1) + "\n")
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
    (out / f"{stem}.md").write_text("\n".join([f"`{command}`", "", *lines]) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
