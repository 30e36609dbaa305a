"""Mixture of experts on CPU: does the load-balancing loss balance, and what do routed experts cost.

    python benchmarks/moe.py --data-path ../shared/data/tinyshakespeare.txt

1. Balance: the moe_tiny preset (8 experts, top-2, dropless) trains --steps steps on the
   shakespeare corpus (character tokens, the presets' defaults: clipping, evaluation, sampling),
   once with the aux loss at its default coefficient and once with it off
   (model.moe.aux_loss_coef=0); the busiest expert's load over the mean load (worst layer, and the
   mean over layers) at the last steps, and the validation loss.
2. Cost: tokens/s of moe_tiny against the dense tiny preset, whose MLP has the same active
   weights per token (tiny's 1024-wide MLP; two of moe_tiny's 512-wide experts), median over the
   steps after the first five, one process.

Writes benchmarks/results/moe.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from report import PYTHON, command, header, launch, machine, read_metrics, write  # beside this file

RUN = [
    "data=shakespeare_char",
    "logging.progress_bar=false",
    "logging.tensorboard=false",
    "trainer.save_at_end=false",
]
LAST = 10  # steps averaged at the end of a balance run


def train(root: Path, name: str, overrides: list[str], data_path: Path) -> list[dict]:
    args = [*RUN, *overrides, f"data.path={data_path}", f"run.root={root}", f"run.name={name}"]
    launch([PYTHON, "launch/pretrain.py", *args], timeout=3600)
    return read_metrics(root / name)


def balance(root: Path, steps: int, data_path: Path) -> list[dict]:
    rows = []
    for label, extra in (("aux loss 0.01 (default)", []), ("aux loss off", ["model.moe.aux_loss_coef=0"])):
        overrides = ["model=moe_tiny", f"trainer.max_steps={steps}", *extra]
        metrics = train(root, f"balance{len(rows)}", overrides, data_path)
        last = metrics[-LAST:]
        layers = [k for k in last[-1] if k.startswith("moe_load_max_mean_l")]
        rows.append(
            {
                "run": label,
                "steps": len(metrics),
                "load_max_mean_worst_layer": round(statistics.mean(r["moe_load_max_mean"] for r in last), 3),
                "load_max_mean_layer_mean": round(statistics.mean(r[k] for r in last for k in layers), 3),
                "aux_loss": round(statistics.mean(r["moe_aux_loss"] for r in last), 4),
                "val_loss": round(next(r["val_loss"] for r in reversed(metrics) if "val_loss" in r), 4),
            }
        )
        print(rows[-1], flush=True)
    return rows


def cost(root: Path, steps: int, data_path: Path) -> list[dict]:
    rows = []
    for model in ("tiny", "moe_tiny"):
        overrides = [f"model={model}", f"trainer.max_steps={steps}", "trainer.eval_interval=100000"]
        metrics = train(root, f"cost_{model}", [*overrides, "trainer.sample_tokens=0"], data_path)[5:]
        rows.append(
            {
                "model": model,
                "tokens_per_sec": round(statistics.median(r["tokens_per_sec"] for r in metrics)),
                "step_seconds": round(statistics.median(r["step_time"] for r in metrics), 4),
                "mfu": round(statistics.median(r["mfu"] for r in metrics), 4),
            }
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-path", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=200, help="steps of each balance run")
    parser.add_argument("--cost-steps", type=int, default=30, help="steps of each speed run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="moe-bench-") as tmp:
        root = Path(tmp)
        report = {"command": command(), **machine()}
        report["balance"] = balance(root, args.steps, args.data_path.resolve())
        report["cost"] = cost(root, args.cost_steps, args.data_path.resolve())
    lines = [
        *header(report),
        f"Balance, moe_tiny, {args.steps} steps (means over the last {LAST}):",
        "",
        "| run | max/mean load, worst layer | max/mean load, mean of layers | aux loss | val loss |",
        "|---|---|---|---|---|",
        *(
            f"| {r['run']} | {r['load_max_mean_worst_layer']} | {r['load_max_mean_layer_mean']} | {r['aux_loss']} | "
            f"{r['val_loss']} |"
            for r in report["balance"]
        ),
        "",
        "Cost, one process (median after the first 5 steps):",
        "",
        "| model | tokens/s | step s | MFU (active FLOPs) |",
        "|---|---|---|---|",
        *(f"| {r['model']} | {r['tokens_per_sec']:,} | {r['step_seconds']} | {r['mfu']} |" for r in report["cost"]),
    ]
    write("moe", report, lines)


if __name__ == "__main__":
    main()
