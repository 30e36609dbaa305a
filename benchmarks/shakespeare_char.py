"""nanoGPT's shakespeare_char CPU recipe through bigtrain, over several seeds.

    python benchmarks/shakespeare_char.py --data-path ../shared/data/tinyshakespeare.txt --seeds 1234 7 42

Runs `launch/pretrain.py experiment=shakespeare_char_cpu` once per seed and position type
(`rope`, the preset, and `learned`, nanoGPT's GPT-2 block exactly) and records the validation loss
at iteration 2000 (the recipe's 20 eval batches of 12, as nanoGPT reports), the loss on the whole
validation split, and the median tokens/s. With --reference it also runs
benchmarks/reference_shakespeare.py, an independent plain-PyTorch implementation of the same
recipe with nanoGPT-style random-window sampling, to show what the recipe itself reaches here.
Writes benchmarks/results/shakespeare_char_cpu.json and .md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from report import ROOT, command, write  # beside this file

POSITIONS = ("rope", "learned")


def bigtrain_run(data_path: str, seed: int, position: str, tmp: Path) -> dict:
    run_dir = tmp / f"{position}-seed{seed}"
    subprocess.run(
        [
            sys.executable,
            "launch/pretrain.py",
            "experiment=shakespeare_char_cpu",
            f"data.path={data_path}",
            f"model.position={position}",
            f"trainer.seed={seed}",
            f"hydra.run.dir={run_dir}",
            "logging.progress_bar=false",
            "trainer.sample_tokens=300",
            "trainer.eval_full_split_at_end=true",
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run_dir / "summary.json").read_text())
    return {
        "seed": seed,
        "position": position,
        "val_loss_2000": rows[-1]["val_loss"],
        "train_loss_2000": rows[-1]["loss"],
        "val_loss_full_split": summary["val_loss_full_split"],
        "tokens_per_sec": statistics.median(r["tokens_per_sec"] for r in rows),
        "sample": summary.get("sample", "")[:300],
    }


def reference_run(data_path: str, seed: int, position: str) -> dict:
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "reference_shakespeare.py"), data_path, str(seed), position],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {"seed": seed, "position": position, **json.loads(out.strip().splitlines()[-1])}


def mean(runs: list[dict], position: str, key: str) -> float:
    return statistics.mean(r[key] for r in runs if r["position"] == position)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-path", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1234, 7, 42])
    parser.add_argument("--reference", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = []
        for position in POSITIONS:
            for seed in args.seeds:
                runs.append(bigtrain_run(args.data_path, seed, position, Path(tmp)))
                print(json.dumps({k: v for k, v in runs[-1].items() if k != "sample"}), flush=True)
    refs = []
    for position in POSITIONS if args.reference else ():
        for seed in args.seeds:
            refs.append(reference_run(args.data_path, seed, position))
            print("reference", json.dumps(refs[-1]), flush=True)
    result = {
        "command": command(),
        "bigtrain": runs,
        "reference": refs,
        "bigtrain_mean": {
            p: {k: mean(runs, p, k) for k in ("val_loss_2000", "val_loss_full_split")} for p in POSITIONS
        },
        "reference_mean": {
            p: {k: mean(refs, p, k) for k in ("val_loss_2000", "val_loss_full_split")} for p in POSITIONS
        }
        if refs
        else {},
    }
    lines = [
        f"`{result['command']}`",
        "",
        "| run | positions | seed | val loss @2000 (20×12 windows) | val loss, whole split | "
        "train loss @2000 | tokens/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, rows in (("bigtrain", runs), ("plain-PyTorch reference", refs)):
        lines += [
            f"| {name} | {r['position']} | {r['seed']} | {r['val_loss_2000']:.4f} | {r['val_loss_full_split']:.4f} | "
            f"{r['train_loss_2000']:.4f} | {r['tokens_per_sec']:,.0f} |"
            for r in rows
        ]
    write("shakespeare_char_cpu", result, lines)


if __name__ == "__main__":
    main()
