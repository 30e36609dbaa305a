"""Summarize a GPU check run (benchmarks/gpu/check.sh): DIR/gpu_check.json and gpu_check.md from
the tests' junit XML, the MFU result and the GPU's description.

    python3 benchmarks/gpu/summarize.py DIR TESTS_EXIT MFU_EXIT SECONDS
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def test_cases(xml: Path) -> list[dict]:
    if not xml.exists():
        return []
    cases = []
    for case in ET.parse(xml).getroot().iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            outcome = "failed"
        elif case.find("skipped") is not None:
            outcome = "skipped"
        else:
            outcome = "passed"
        name = f"{case.get('classname')}::{case.get('name')}"
        cases.append({"test": name, "outcome": outcome, "seconds": float(case.get("time", 0))})
    return cases


def main() -> None:
    out, tests_rc, mfu_rc, seconds = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    gpu = (out / "gpu.txt").read_text().strip() if (out / "gpu.txt").exists() else None
    cases = test_cases(out / "tests.xml")
    mfu = json.loads((out / "mfu.json").read_text()) if (out / "mfu.json").exists() else None
    result = {
        "command": "bash benchmarks/gpu/check.sh",
        "gpu": gpu,
        "seconds": seconds,
        "tests_exit": tests_rc,
        "tests": cases,
        "mfu_exit": mfu_rc,
        "mfu": mfu,
    }
    (out / "gpu_check.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"GPU check on {gpu}, {seconds} s in all (`bash benchmarks/gpu/check.sh`)", ""]
    lines += ["| test | outcome | s |", "|---|---|---|"]
    lines += [f"| {c['test']} | {c['outcome']} | {c['seconds']:.1f} |" for c in cases]
    if mfu:
        lines += [
            "",
            f"{mfu['train_command'].split()[2]} bf16 on one GPU: MFU {mfu['mfu_median']:.3f} "
            f"({mfu['tflops_median']:.4g} TFLOP/s of {mfu['mfu_peak_tflops']:.4g}: {mfu['mfu_peak_source']}), "
            f"{mfu['tokens_per_s_median']:,.0f} tokens/s, peak memory {mfu['peak_memory_gb']} GB",
            "",
            f"`{mfu['train_command']}`",
        ]
    else:
        lines += ["", f"the MFU run failed (exit {mfu_rc}): see mfu.out"]
    (out / "gpu_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
