"""bigtrain against the bare loop, in one run: the framework tax, the compiled path and bf16.

    python benchmarks/speed.py --data-path ../shared/data/tinyshakespeare.txt [--rounds 5] [--quality]

Two models, each trained by `benchmarks/bare_loop.py` (a single-file eager PyTorch loop) and by
`launch/pretrain.py` (the real entry point, one process) with the same shape, batch and data:
  preset  experiment=shakespeare_char_cpu (4 layers, 128 dim, block 64, batch 12, rotary);
  10.8M   6 layers, 384 dim, 6 heads, block 256, batch 8, learned positions, character vocabulary.
Cases run in interleaved rounds (so the machine's drifting speed hits all alike); each case's
figure is the median step time after the warm-up steps (compilation included there), the median
over rounds. Ratios are against the bare fp32 eager loop of the same model, taken within each round
and then the median over rounds (this machine's speed drifts by more than the ratios measured, over
minutes; a round's cases run within about a minute of each other), with their range. The fp32 and bf16
matmul peaks are measured in the same run, for the bf16 MFU; a CPU whose bf16 matmuls are slower
than its fp32 ones (no AMX or AVX512-BF16) skips the bf16 cases and says so. --quality also
trains the preset to step 2000 eager and compiled and compares validation loss.
Writes benchmarks/results/speed_<device>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

PRESET = {"layers": 4, "heads": 4, "dim": 128, "block": 64, "batch": 12, "position": "rope", "steps": 150}
MID = {"layers": 6, "heads": 6, "dim": 384, "block": 256, "batch": 8, "position": "learned", "steps": 30}
WARMUP = 10

# (case, model, runner, precision, compile)
CASES = [
    ("preset bare fp32", PRESET, "bare", "fp32", False),
    ("preset bigtrain fp32", PRESET, "bigtrain", "fp32", False),
    ("preset bigtrain fp32 compiled", PRESET, "bigtrain", "fp32", True),
    ("10.8M bare fp32", MID, "bare", "fp32", False),
    ("10.8M bigtrain fp32", MID, "bigtrain", "fp32", False),
    ("10.8M bare bf16 (autocast)", MID, "bare", "bf16", False),
    ("10.8M bigtrain bf16", MID, "bigtrain", "bf16", False),
    ("10.8M bigtrain bf16 compiled", MID, "bigtrain", "bf16", True),
]


def shape_overrides(model: dict) -> list[str]:
    """bigtrain's overrides for a bare_loop.py shape (layers, heads, dim, block, position)."""
    return [
        f"model.n_layers={model['layers']}",
        f"model.n_heads={model['heads']}",
        f"model.d_model={model['dim']}",
        f"model.seq_len={model['block']}",
        f"model.position={model['position']}",
    ]


def bigtrain_overrides(model: dict, precision: str, compiled: bool, steps: int) -> list[str]:
    return [
        "experiment=shakespeare_char_cpu",
        *shape_overrides(model),
        f"trainer.micro_batch_size={model['batch']}",
        f"trainer.global_batch_size={model['batch']}",
        f"trainer.max_steps={steps}",
        f"trainer.eval_interval={steps}",
        "trainer.eval_iters=1",
        "trainer.log_interval=1",
        "trainer.sample_tokens=0",
        "trainer.save_at_end=false",
        f"trainer.compile={str(compiled).lower()}",
        f"precision={precision}",
        "logging.progress_bar=false",
        "logging.tensorboard=false",
    ]


def run_bigtrain(model: dict, precision: str, compiled: bool, data: str, work: Path) -> dict:
    run_dir = work / f"bigtrain-{len(list(work.iterdir()))}"
    args = bigtrain_overrides(model, precision, compiled, model["steps"])
    cmd = [PYTHON, "launch/pretrain.py", *args, f"data.path={data}", f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"bigtrain failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steady = [r for r in rows if r["step"] > WARMUP and "val_loss" not in r]
    return {
        "step_time": statistics.median(r["step_time"] for r in steady),
        "tflops": statistics.median(r["tflops"] for r in steady),
        "loss": rows[-1]["loss"],
    }


def run_bare(model: dict, precision: str, data: str) -> dict:
    cmd = [PYTHON, str(ROOT / "benchmarks" / "bare_loop.py"), "--data", data, "--dtype", precision]
    cmd += [f"--{key}={model[key]}" for key in ("layers", "heads", "dim", "block", "batch", "position", "steps")]
    cmd += [f"--warmup={WARMUP}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"bare loop failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def val_loss_at_2000(data: str, compiled: bool, work: Path) -> float:
    run_dir = work / f"quality-{compiled}"
    cmd = [PYTHON, "launch/pretrain.py", "experiment=shakespeare_char_cpu", f"data.path={data}"]
    cmd += [f"trainer.compile={str(compiled).lower()}", "trainer.sample_tokens=0", "logging.progress_bar=false"]
    cmd += ["logging.tensorboard=false", "trainer.save_at_end=false", f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads((run_dir / "summary.json").read_text())["val_loss"]


def versions() -> dict:
    from importlib.metadata import version  # noqa: PLC0415

    import deepspeed  # noqa: PLC0415

    from bigtrain.metrics.peak import _cpu_name  # noqa: PLC0415

    return {
        "machine": f"{_cpu_name()}, {torch.get_num_threads()} threads",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "deepspeed": deepspeed.__version__,
        "megatron-core": version("megatron-core"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-path", required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quality", action="store_true")
    args = parser.parse_args()
    from bigtrain.metrics.peak import measure_cpu_peak  # noqa: PLC0415

    data = str(Path(args.data_path).resolve())
    fp32_peak, bf16_peak = measure_cpu_peak(torch.float32, 2.0), measure_cpu_peak(torch.bfloat16, 2.0)
    skipped = None
    if bf16_peak < fp32_peak:
        skipped = (
            f"bf16 cases skipped: this CPU's bf16 matmuls run at {bf16_peak:.4f} TFLOP/s, below fp32's "
            f"{fp32_peak:.3f} (no AMX or AVX512-BF16 units)"
        )
    cases = [case for case in CASES if not (skipped and case[3] == "bf16")]
    times: dict[str, list[dict]] = {case[0]: [] for case in cases}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name, model, runner, precision, compiled in cases:
                if runner == "bare":
                    result = run_bare(model, precision, data)
                else:
                    result = run_bigtrain(model, precision, compiled, data, Path(tmp))
                times[name].append(result)
                print(
                    f"round {r + 1} {name}: {model['batch'] * model['block'] / result['step_time']:,.0f} tok/s",
                    flush=True,
                )
        quality = None
        if args.quality:
            eager, compiled = val_loss_at_2000(data, False, Path(tmp)), val_loss_at_2000(data, True, Path(tmp))
            quality = {"eager": eager, "compiled": compiled, "difference": compiled - eager}
    results = []
    for name, model, runner, precision, compiled in cases:
        step = statistics.median(t["step_time"] for t in times[name])
        bare = times[f"{name.split()[0]} bare fp32"]
        ratios = [b["step_time"] / t["step_time"] for b, t in zip(bare, times[name])]
        row = {"case": name, "runner": runner, "precision": precision, "compile": compiled}
        row |= {"tokens_per_sec": model["batch"] * model["block"] / step, "vs_bare_fp32": statistics.median(ratios)}
        row |= {"vs_bare_fp32_per_round": ratios}
        row |= {"loss_last_step": statistics.median(t["loss"] for t in times[name])}
        if runner == "bigtrain":
            tflops = statistics.median(t["tflops"] for t in times[name])
            row |= {"tflops": tflops, "mfu_vs_bf16_peak": tflops / bf16_peak if precision == "bf16" else None}
        results.append(row)
    command = "python " + " ".join(sys.argv)
    report = {"command": command, **versions(), "rounds": args.rounds}
    report |= {"fp32_matmul_peak_tflops": fp32_peak, "bf16_matmul_peak_tflops": bf16_peak, "skipped": skipped}
    report |= {"results": results, "quality_at_2000": quality}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = ROOT / "benchmarks" / "results" / f"speed_{device}"
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [
        f"`{command}`",
        "",
        f"{report['machine']}; torch {torch.__version__}, DeepSpeed {report['deepspeed']}, "
        f"megatron-core {report['megatron-core']}; matmul peaks measured in this run: fp32 {fp32_peak:.3f}, "
        f"bf16 {bf16_peak:.3f} TFLOP/s",
        "",
        *([skipped, ""] if skipped else []),
    ]
    lines += ["| case | tokens/s | vs bare fp32 eager (median of rounds) | range | TFLOP/s | MFU vs bf16 peak |"]
    lines += ["|---|---|---|---|---|---|"]
    for row in results:
        tflops = f"{row['tflops']:.3f}" if "tflops" in row else ""
        mfu = f"{100 * row['mfu_vs_bf16_peak']:.1f}%" if row.get("mfu_vs_bf16_peak") else ""
        spread = f"{min(row['vs_bare_fp32_per_round']):.3f}-{max(row['vs_bare_fp32_per_round']):.3f}"
        ratio = f"{row['vs_bare_fp32']:.3f}×"
        lines.append(f"| {row['case']} | {row['tokens_per_sec']:,.0f} | {ratio} | {spread} | {tflops} | {mfu} |")
    if quality:
        lines += [
            "",
            f"Validation loss at step 2000 (preset): eager {quality['eager']:.4f}, compiled "
            f"{quality['compiled']:.4f}, difference {quality['difference']:+.4f}",
        ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
