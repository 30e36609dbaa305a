"""The planner's memory prediction against real runs, on every data-parallel and tensor-parallel
layout of 1-2 CPU ranks.

    python benchmarks/plan_memory.py --data-path ../shared/data/tinyshakespeare.txt

gpt2_124m's shape (model states dominate; sequence 128, micro-batch 1, global batch 2, a
character vocabulary) trains 3 fp32 steps through the real launcher per layout. Rank 0's peak
resident memory before the final checkpoint (metrics.jsonl's mem_gb, the process's ru_maxrss) is
compared with the planner's prediction for that rank (`bigtrain/plan.py`, CPU fixed overhead).
`tests/e2e/test_plan_memory.py` runs the same comparison on the layouts within 10%.
Writes benchmarks/results/plan_memory.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bigtrain.plan import GB  # noqa: E402
from tests.helpers.plan_memory import LAYOUTS, RUN, compare  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-path", type=Path, required=True)
    args = parser.parse_args()
    rows = []
    for name in LAYOUTS:
        measured, predicted = compare(name, args.data_path.resolve(), Path(tempfile.mkdtemp(prefix=f"plan-{name}-")))
        rows.append(
            {
                "layout": name,
                "measured_gb": round(measured / GB, 3),
                "predicted_gb": round(predicted.total_bytes / GB, 3),
                "ratio": round(predicted.total_bytes / measured, 3),
                "predicted_parts_gb": {k: round(v / GB, 3) for k, v in predicted.memory.items()},
            }
        )
        print(rows[-1], flush=True)
    command = "python benchmarks/plan_memory.py " + " ".join(sys.argv[1:])
    out = ROOT / "benchmarks" / "results"
    result = {"command": command, "run": RUN, "results": rows}
    (out / "plan_memory.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"`{command}`", "", "| layout | measured GB | predicted GB | predicted / measured |", "|---|---|---|---|"]
    lines += [f"| {r['layout']} | {r['measured_gb']} | {r['predicted_gb']} | {r['ratio']:.2f}× |" for r in rows]
    (out / "plan_memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
