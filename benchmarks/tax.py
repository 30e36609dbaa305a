"""The framework tax, measured in one process: bigtrain's real training run and the bare loop take
turns, a block of steps each, so that this machine's drifting speed hits both alike.

    python benchmarks/tax.py --data-path ../shared/data/tinyshakespeare.txt [--cases preset 10.8M ...]

Each case runs in its own process. There `bigtrain.entry.run.run` trains as `launch/pretrain.py` would
(the preset's trainer: prefetching data pipeline, bigtrain's clipping, metrics sinks, evaluation on
the preset's cadence), and after every block of its steps (20; 4 for 10.8M) the bare loop of
`benchmarks/bare_loop.py` (same model shape, batch and corpus; eager fp32) runs as many steps in
the same process. A bigtrain step is the wall time from one step's end to the next one's (logging
and evaluation included, timed by a step callback); a bare step is one call of its loop body.
Each block pair gives a ratio, bare step time / bigtrain step time (above 1: bigtrain is
faster); the case's figure is the median over pairs, with the quartiles. Each side's first steps
(warm-up, compilation) are left out.

Process-level runs (`benchmarks/speed.py`) start each loop fresh; on this shared 2-core machine their
ratios spread over ±20% from round to round, which hides a few percent of tax. Writes
benchmarks/results/tax_<device>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import speed  # noqa: E402  (beside this file)
from bare_loop import bare_step  # noqa: E402

# speed.py's two models, without its step counts (this script sets its own)
PRESET, MID = ({k: v for k, v in m.items() if k != "steps"} for m in (speed.PRESET, speed.MID))
# name: (model shape, bigtrain's extra overrides, steps per side, steps per block, warm-up steps, target)
CASES = {
    "preset": (PRESET, [], 600, 20, 20, 0.97),
    # the bare loop's AdamW is torch's default (foreach on CPU); bigtrain's default is fused
    "preset-foreach": (PRESET, ["optim.implementation=foreach"], 600, 20, 20, 0.97),
    # the preset compiles the whole model (trainer.compile_scope=model in its yaml)
    "preset-compiled": (PRESET, ["trainer.compile=true"], 600, 20, 20, 1.2),
    "10.8M": (MID, [], 48, 4, 8, 0.97),
}


def overrides(model: dict, extra: list[str], steps: int, data: str, run_dir: Path) -> list[str]:
    """The preset with this shape; everything else (clipping, logging, evaluation) as users run it."""
    return [
        "experiment=shakespeare_char_cpu",
        f"data.path={data}",
        *speed.shape_overrides(model),
        f"trainer.micro_batch_size={model['batch']}",
        f"trainer.global_batch_size={model['batch']}",
        f"trainer.max_steps={steps}",
        "trainer.sample_tokens=0",
        "trainer.save_at_end=false",
        "logging.progress_bar=false",
        f"trainer.ckpt_dir={run_dir / 'checkpoints'}",
        *extra,
    ]


def measure(case: str, data: str) -> dict:
    """One case, in this process: bigtrain's run with the bare loop's blocks between its steps."""
    from bigtrain.entry.process import setup_process  # noqa: PLC0415

    setup_process()
    from bigtrain.config.hydra import compose  # noqa: PLC0415
    from bigtrain.entry.run import run  # noqa: PLC0415

    model, extra, steps, block, skip, target = CASES[case]
    bare = bare_step(data, **model)
    for _ in range(skip):
        bare()
    big_times: list[float] = []
    bare_times: list[float] = []
    pairs: list[tuple[int, int]] = []  # (end of a bigtrain block, end of its bare block) in each list
    last = [None]

    class Turns:
        """A step callback: bigtrain's step time from one step's end to the next (its logging,
        evaluation and checkpoints included), and the bare loop's block after every `block` steps."""

        def step_end(self, step: int, metrics: dict) -> None:
            now = time.perf_counter()
            if last[0] is not None:
                big_times.append(now - last[0])
            done = len(big_times)
            if done and done % block == 0:
                for _ in range(block):
                    start = time.perf_counter()
                    bare()
                    bare_times.append(time.perf_counter() - start)
                pairs.append((done, len(bare_times)))
            last[0] = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "tax"
        summary = run(compose(overrides(model, extra, steps, data, run_dir)), run_dir, callbacks=[Turns()])
    ratios, big_blocks, bare_blocks = [], [], []
    for end_big, end_bare in pairs:
        if end_big - block < skip:  # warm-up (and compilation) blocks
            continue
        big = statistics.median(big_times[end_big - block : end_big])
        ref = statistics.median(bare_times[end_bare - block : end_bare])
        big_blocks.append(big)
        bare_blocks.append(ref)
        ratios.append(ref / big)
    if len(ratios) < 4:
        raise SystemExit(f"{case}: only {len(ratios)} block pairs after the warm-up: raise the steps")
    quartiles = statistics.quantiles(ratios, n=4)
    tokens = model["batch"] * model["block"]
    return {
        "case": case,
        "model": model,
        "overrides": extra,
        "block_pairs": len(ratios),
        "steps_per_block": block,
        "bare_over_bigtrain": statistics.median(ratios),
        "quartiles": [quartiles[0], quartiles[2]],
        "range": [min(ratios), max(ratios)],
        "target": target,
        "bigtrain_tokens_per_sec": tokens / statistics.median(big_blocks),
        "bare_tokens_per_sec": tokens / statistics.median(bare_blocks),
        "val_loss": summary["val_loss"],
        "ratios": ratios,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-path", required=True)
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--one", choices=list(CASES), help=argparse.SUPPRESS)  # a child process's case
    args = parser.parse_args()
    data = str(Path(args.data_path).resolve())
    if args.one:
        print("RESULT " + json.dumps(measure(args.one, data)), flush=True)
        return
    results = []
    for case in args.cases:
        cmd = [sys.executable, __file__, "--data-path", data, "--one", case]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=3600)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            raise SystemExit(f"case {case} failed:\n{proc.stderr[-3000:]}")
        result = json.loads(lines[-1][len("RESULT ") :])
        results.append(result)
        print(
            f"{case}: bare/bigtrain {result['bare_over_bigtrain']:.3f} (quartiles {result['quartiles'][0]:.3f}-"
            f"{result['quartiles'][1]:.3f}, {result['block_pairs']} block pairs)",
            flush=True,
        )
    command = "python " + " ".join(sys.argv)
    report = {"command": command, **speed.versions(), "results": results}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = ROOT / "benchmarks" / "results" / f"tax_{device}"
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [
        f"`{command}`",
        "",
        f"{report['machine']}; torch {report['torch']}, DeepSpeed {report['deepspeed']}, "
        f"megatron-core {report['megatron-core']}",
        "",
        "| case | bigtrain tok/s | bare eager tok/s | bigtrain speed / bare (median of block pairs) | quartiles | "
        "block pairs | target |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['case']} | {r['bigtrain_tokens_per_sec']:,.0f} | {r['bare_tokens_per_sec']:,.0f} | "
            f"{r['bare_over_bigtrain']:.3f}× | {r['quartiles'][0]:.3f}-{r['quartiles'][1]:.3f} | "
            f"{r['block_pairs']} × {r['steps_per_block']} steps | ≥ {r['target']}× |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
