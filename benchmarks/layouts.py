"""The sweep runner: model size × layout × precision × micro-batch × compile, through the real
deepspeed launcher, with the bare loop of each model as the baseline.

    python benchmarks/layouts.py --data-path ../shared/data/tinyshakespeare.txt [--steps 30] \
        [--models 4M] [--layouts single zero1_dp2 ...] [--precisions fp32 bf16] \
        [--micro-batches 0 2] [--compile off on] [--name NAME]

Every case keeps the global batch at 16 sequences; micro-batch 0 means the layout's own (the whole
batch per data-parallel rank, no accumulation, except pipelines: 4 micro-batches of 4). tokens/s
is the median over steps after the first five (start-up and compilation excluded); TFLOP/s and MFU
are per rank, against each rank's peak; peak memory is each rank's peak resident set (CPU) or
allocated memory (GPU). A case the config refuses (compile under TP, say) is recorded with
bigtrain's one-line reason. `benchmarks/bare.py`'s loop trains each model × precision in this process
at the same batch: "vs bare" is a case's total tokens/s over it. Communication's share of a
step is rank 0's time inside collectives over its step time (`logging.comm_time`: measured over
gloo, waiting for the slowest rank included; not over NCCL). Writes
benchmarks/results/<name>.{json,md,png} (name: layouts_<device>), with the command, the machine and
the library versions.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import tempfile
from pathlib import Path

import torch
from bare import measure, shape_overrides  # beside this file, as report.py
from report import ROOT, command, deepspeed_command, machine, write

GLOBAL_BATCH = 16
MODELS = {  # name: bare_loop's shape (bigtrain gets the same: no biases, GELU, tied head)
    "0.8M": {"layers": 4, "heads": 4, "dim": 128, "block": 64, "position": "rope"},
    "4M": {"layers": 4, "heads": 4, "dim": 256, "block": 128, "position": "learned"},
    "10.8M": {"layers": 6, "heads": 6, "dim": 384, "block": 256, "position": "learned"},
}
LAYOUTS = {  # name: (ranks, overrides, its own micro-batch: no accumulation, except pipelines)
    "single": (1, ["parallel=single"], 16),
    "zero1_dp2": (2, ["parallel=zero1"], 8),
    "zero2_dp2": (2, ["parallel=zero2"], 8),
    "zero3_dp2": (2, ["parallel=zero3"], 8),
    "tp2": (2, ["parallel=tp2"], 16),
    "tp2_sp": (2, ["parallel=tp2_sp"], 16),
    "pp2": (2, ["parallel=pp2"], 4),
    "tp2_pp2": (4, ["parallel=tp2_pp2"], 4),
    "tp2_dp2_zero1": (4, ["parallel=tp2", "parallel.zero_stage=1"], 8),
}


def run(case: dict, args, workdir: Path) -> dict:
    ranks, overrides, own_micro = LAYOUTS[case["layout"]]
    micro = case["micro_batch"] or own_micro
    run_dir = workdir / "-".join(str(v) for v in case.values())
    cmd = [*deepspeed_command(ranks), "model=tiny", "model.bias=false", *shape_overrides(MODELS[case["model"]])]
    cmd += overrides
    cmd += [f"data.path={args.data_path}", "data=shakespeare_char", f"trainer.max_steps={args.steps}"]
    cmd += [f"trainer.global_batch_size={GLOBAL_BATCH}", f"trainer.micro_batch_size={micro}"]
    cmd += [f"precision={case['precision']}", f"trainer.compile={str(case['compile']).lower()}"]
    cmd += [f"trainer.eval_interval={args.steps}", "trainer.eval_iters=1", "trainer.sample_tokens=0"]
    cmd += ["trainer.save_at_end=false", "logging.progress_bar=false", "logging.tensorboard=false"]
    cmd += ["logging.comm_time=true", f"hydra.run.dir={run_dir}"]
    row = {**case, "micro_batch": micro, "ranks": ranks}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    refusal = [line for line in proc.stderr.splitlines() if "bigtrain: error:" in line]
    if proc.returncode != 0 or not (run_dir / "summary.json").exists():
        return {**row, "error": refusal[0].split("error: ", 1)[1] if refusal else proc.stderr[-1500:]}
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run_dir / "summary.json").read_text())
    steady = [r for r in rows[5:] if "val_loss" not in r] or rows
    tokens = statistics.median(r["tokens_per_sec"] for r in steady)
    return {
        **row,
        "tokens_per_sec": tokens,
        "tokens_per_sec_per_rank": tokens / ranks,
        "tflops_per_rank": statistics.median(r["tflops"] for r in steady),
        "mfu": statistics.median(r["mfu"] for r in steady) if steady[0]["mfu"] is not None else None,
        "peak_mem_gb_per_rank": summary["peak_mem_gb_per_rank"],
        "comm_share": statistics.median(r["comm_share"] for r in steady) if "comm_share" in steady[0] else None,
        "final_loss": rows[-1]["loss"],
    }


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name().replace(" ", "_")
    return f"cpu{torch.get_num_threads()}"


def markdown(report: dict) -> str:
    lines = [f"`{report['command']}`", ""]
    lines += [f"{report['machine']}; torch {report['torch']}, DeepSpeed {report['deepspeed']}, "]
    lines[-1] += f"megatron-core {report['megatron-core']}, Python {report['python']}"
    lines += ["", "Bare loop (one process, same model and batch): "]
    lines[-1] += ", ".join(f"{k} {v['tokens_per_sec']:,.0f} tok/s" for k, v in report["bare"].items())
    lines += ["", "| model | layout | ranks | precision | micro-batch | compile | tokens/s | per rank | "]
    lines[-1] += "TFLOP/s per rank | MFU | peak memory per rank (GB) | comm share | vs bare |"
    lines += ["|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        head = f"| {r['model']} | {r['layout']} | {r['ranks']} | {r['precision']} | {r['micro_batch']} | "
        head += "on" if r["compile"] else "off"
        if "error" in r:
            lines.append(f"{head} | refused or failed: {r['error'][:160]} | | | | | | |")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        mem = ", ".join(f"{m:.2f}" for m in r["peak_mem_gb_per_rank"])
        vs = f"{r['vs_bare']:.2f}×" if r.get("vs_bare") else ""
        comm = f"{100 * r['comm_share']:.0f}%" if r.get("comm_share") is not None else "n/a"
        lines.append(
            f"{head} | {r['tokens_per_sec']:,.0f} | {r['tokens_per_sec_per_rank']:,.0f} | "
            f"{r['tflops_per_rank']:.3f} | {mfu} | {mem} | {comm} | {vs} |"
        )
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    """Four panels: throughput by layout, scaling efficiency vs process count, memory by layout,
    bigtrain vs bare. Cases are labelled layout[/precision/micro-batch/compiled] as they vary."""
    try:
        import matplotlib  # noqa: PLC0415
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    ok = [r for r in report["results"] if "error" not in r]
    labels = []
    for r in ok:
        parts = [r["model"] if len({x["model"] for x in ok}) > 1 else "", r["layout"]]
        parts += [r["precision"] if len({x["precision"] for x in ok}) > 1 else ""]
        parts += [f"mb{r['micro_batch']}" if report.get("micro_batches", [0]) != [0] else ""]
        labels.append(" ".join(p for p in parts if p) + (" compiled" if r["compile"] else ""))
    fig, axes = plt.subplots(2, 2, figsize=(14, 9))
    axes[0, 0].bar(labels, [r["tokens_per_sec"] for r in ok], label="step")
    comm = [r["tokens_per_sec"] * (r.get("comm_share") or 0) for r in ok]
    axes[0, 0].bar(labels, comm, color="tab:red", label="its share inside collectives (rank 0)")
    axes[0, 0].set(title="throughput by layout", ylabel="tokens/s (all ranks)")
    axes[0, 0].legend()
    for model in sorted({r["model"] for r in ok}):
        base = [r for r in ok if r["model"] == model and r["ranks"] == 1 and not r["compile"]]
        if not base:
            continue
        best = {}
        for r in ok:
            if r["model"] == model and not r["compile"]:
                best[r["ranks"]] = max(best.get(r["ranks"], 0), r["tokens_per_sec"])
        ranks = sorted(best)
        axes[0, 1].plot(ranks, [best[n] / (n * base[0]["tokens_per_sec"]) for n in ranks], "o-", label=model)
    axes[0, 1].set(title="scaling efficiency (best layout per process count)", xlabel="processes")
    axes[0, 1].set(ylabel="tokens/s per rank ÷ one process")
    axes[0, 1].legend()
    axes[1, 0].bar(labels, [max(r["peak_mem_gb_per_rank"]) for r in ok])
    axes[1, 0].set(title="memory by layout", ylabel="peak GB, largest rank")
    axes[1, 1].bar(labels, [r.get("vs_bare") or 0 for r in ok])
    axes[1, 1].axhline(1.0, color="black", linewidth=0.8)
    axes[1, 1].set(title="bigtrain vs bare loop (same model, batch, precision)", ylabel="tokens/s ratio")
    for ax in (axes[0, 0], axes[1, 0], axes[1, 1]):
        ax.tick_params(axis="x", labelrotation=75, labelsize=7)
    fig.suptitle(f"bigtrain sweep on {report['machine']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-path", required=True)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--models", nargs="+", default=["4M"], choices=list(MODELS))
    parser.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS))
    parser.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--micro-batches", nargs="+", type=int, default=[0])
    parser.add_argument("--compile", nargs="+", default=["off"], choices=["off", "on"])
    parser.add_argument("--name", default=None)
    args = parser.parse_args()
    args.data_path = str(Path(args.data_path).resolve())
    axes = (args.models, args.layouts, args.precisions, args.micro_batches, args.compile)
    results, bare = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for model, precision in itertools.product(args.models, args.precisions):
            if precision != "fp16":  # the bare loop autocasts to bf16 only
                shape = {**MODELS[model], "batch": GLOBAL_BATCH}
                bare[f"{model} {precision}"] = measure(args.data_path, shape, precision, args.steps, warmup=10)
                print(f"bare {model} {precision}: {bare[f'{model} {precision}']['tokens_per_sec']:,.0f} tok/s")
        for model, layout, precision, micro, compiled in itertools.product(*axes):
            case = {"model": model, "layout": layout, "precision": precision, "micro_batch": micro}
            result = run({**case, "compile": compiled == "on"}, args, Path(tmp))
            baseline = bare.get(f"{model} {precision}")
            if baseline and "error" not in result:
                result["vs_bare"] = result["tokens_per_sec"] / baseline["tokens_per_sec"]
            print(json.dumps(result), flush=True)
            results.append(result)
    report = {"command": command(), **machine(), "steps": args.steps}
    report |= {"global_batch": GLOBAL_BATCH, "micro_batches": args.micro_batches, "bare": bare, "results": results}
    out = write(args.name or f"layouts_{device_name()}", report, markdown(report).rstrip("\n").splitlines())
    plot(report, out.with_suffix(".png"))


if __name__ == "__main__":
    main()
