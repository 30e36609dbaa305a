"""Throughput and memory of each parallel layout on this machine: the first row of scaling.

    python benchmarks/layouts.py --data-path ../shared/data/tinyshakespeare.txt [--steps 30]

Each layout runs through the real deepspeed launcher for --steps steps on the same model and
global batch; tokens/s is the median over steps after the first five (start-up excluded),
peak memory is each rank's peak resident set (CPU) or allocated memory (GPU). Writes
benchmarks/results/layouts_<device>.json and .md, and a bar plot when matplotlib is present.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from bigtrain.parallel.state import free_port

ROOT = Path(__file__).resolve().parents[1]
MODEL = [
    "model=tiny",
    "model.n_layers=4",
    "model.d_model=256",
    "model.n_heads=4",
    "model.n_kv_heads=2",
    "model.seq_len=128",
]
LAYOUTS = {  # name: (ranks, overrides)
    "single": (1, ["parallel=single", "trainer.micro_batch_size=8"]),
    "zero1_dp2": (2, ["parallel=zero1", "trainer.micro_batch_size=4"]),
    "zero2_dp2": (2, ["parallel=zero2", "trainer.micro_batch_size=4"]),
    "zero3_dp2": (2, ["parallel=zero3", "trainer.micro_batch_size=4"]),
    "tp2": (2, ["parallel=tp2", "trainer.micro_batch_size=8"]),
    "tp2_sp": (2, ["parallel=tp2_sp", "trainer.micro_batch_size=8"]),
    "pp2": (2, ["parallel=pp2", "trainer.micro_batch_size=2"]),
    "tp2_pp2": (4, ["parallel=tp2_pp2", "trainer.micro_batch_size=2"]),
    "tp2_dp2_zero1": (4, ["parallel=tp2", "parallel.zero_stage=1", "trainer.micro_batch_size=4"]),
}


def run(name: str, ranks: int, overrides: list[str], args, workdir: Path) -> dict:
    run_dir = workdir / name
    cmd = [
        shutil.which("deepspeed"),
        "--num_gpus",
        str(ranks),
        "--master_port",
        str(free_port()),
        "launch/pretrain.py",
        *MODEL,
        *overrides,
        f"data.path={args.data_path}",
        "data=shakespeare_char",
        f"trainer.max_steps={args.steps}",
        "trainer.global_batch_size=16",
        f"precision={args.precision}",
        f"trainer.eval_interval={args.steps}",
        "trainer.eval_iters=1",
        "trainer.sample_tokens=0",
        "logging.progress_bar=false",
        "logging.tensorboard=false",
        f"hydra.run.dir={run_dir}",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    if proc.returncode != 0 or not (run_dir / "summary.json").exists():
        return {"layout": name, "ranks": ranks, "error": proc.stderr[-1500:]}
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run_dir / "summary.json").read_text())
    steady = rows[5:] or rows
    return {
        "layout": name,
        "ranks": ranks,
        "tokens_per_sec": statistics.median(r["tokens_per_sec"] for r in steady),
        "tflops_per_rank": statistics.median(r["tflops"] for r in steady),
        "mfu": statistics.median(r["mfu"] for r in steady) if steady[0]["mfu"] is not None else None,
        "peak_mem_gb_per_rank": summary["peak_mem_gb_per_rank"],
        "final_loss": rows[-1]["loss"],
    }


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name().replace(" ", "_")
    return f"cpu{torch.get_num_threads()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-path", required=True)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--only", nargs="*", default=list(LAYOUTS))
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only:
            ranks, overrides = LAYOUTS[name]
            result = run(name, ranks, overrides, args, Path(tmp))
            print(json.dumps(result), flush=True)
            results.append(result)
    out = ROOT / "benchmarks" / "results" / f"layouts_{device_name()}_{args.precision}"
    command = "python " + " ".join(sys.argv)
    out.with_suffix(".json").write_text(json.dumps({"command": command, "model": MODEL, "results": results}, indent=1))
    lines = [
        f"`{command}`",
        "",
        "| layout | ranks | tokens/s | TFLOP/s per rank | MFU | peak memory per rank (GB) |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['layout']} | {r['ranks']} | failed | | | |")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        mem = ", ".join(f"{m:.2f}" for m in r["peak_mem_gb_per_rank"])
        lines.append(
            f"| {r['layout']} | {r['ranks']} | {r['tokens_per_sec']:,.0f} | {r['tflops_per_rank']:.3f} | "
            f"{mfu} | {mem} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    try:  # the plot is optional: matplotlib is a dev dependency
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415

        ok = [r for r in results if "error" not in r]
        fig, ax = plt.subplots(figsize=(8, 3.5))
        ax.bar([r["layout"] for r in ok], [r["tokens_per_sec"] for r in ok])
        ax.set_ylabel("tokens/s")
        ax.set_title(f"bigtrain layouts on {device_name()} ({args.precision})")
        plt.xticks(rotation=30, ha="right")
        fig.tight_layout()
        fig.savefig(out.with_suffix(".png"), dpi=100)
    except ImportError:
        print("matplotlib not installed: no plot")


if __name__ == "__main__":
    main()
