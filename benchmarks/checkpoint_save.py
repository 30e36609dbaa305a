"""Checkpoint save at scale: wall time, bytes on disk, and the host bytes the layout-independent
copy holds per rank, on ZeRO-3 over 2 data-parallel ranks.

    python benchmarks/checkpoint_save.py --models gpt2_124m gpt2_350m --workdir /tmp/ckpt-bench

Each model trains 2 steps on the built-in corpus (`deepspeed --num_gpus 2`, `parallel=zero3`,
sequence 128, micro-batch 1) and saves at step 2. The figures come from the save itself, not
from RSS (on CPU every tensor already lives in host memory): `meta.json` records the save's wall
time and, per rank, the largest number of bytes the consolidated copy held at once
(`bigtrain/train/consolidated.py`, `SaveStats`: counted when a tensor is allocated, released when
Python frees it). Before the copy streamed, every rank built the whole copy on the host: its size
on disk is what each rank held then, shown for comparison.
Writes benchmarks/results/checkpoint_save.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

from report import command, deepspeed_command, header, launch, machine, write  # beside this file
from safetensors import safe_open


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def parameters(folder: Path) -> int:
    total = 0
    for file in folder.glob("model-pp*.safetensors"):
        with safe_open(str(file), framework="pt") as f:
            total += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    return total


def run(model: str, workdir: Path) -> dict:
    shutil.rmtree(workdir / model, ignore_errors=True)
    cmd = [
        *deepspeed_command(2),
        f"model={model}",
        "parallel=zero3",
        "model.seq_len=128",
        "trainer.micro_batch_size=1",
        "trainer.global_batch_size=2",
        "trainer.max_steps=2",
        "trainer.save_interval=2",
        "trainer.eval_interval=1000",
        "trainer.eval_iters=1",
        "trainer.sample_tokens=0",
        f"run.root={workdir}",
        f"run.name={model}",
        "logging.progress_bar=false",
        "logging.tensorboard=false",
    ]
    started = time.perf_counter()
    launch(cmd, timeout=7200)
    ckpt = workdir / model / "checkpoints" / "step_00000002"
    meta = json.loads((ckpt / "bigtrain" / "meta.json").read_text())
    copy = sum(f.stat().st_size for f in (ckpt / "bigtrain").glob("*.safetensors"))
    ranks = meta["consolidated_save"]["per_rank"]
    return {
        "model": model,
        "parameters": parameters(ckpt / "bigtrain"),
        "vocab_size": meta["vocab_size"],
        "save_seconds": meta["save_seconds"],
        "consolidated_seconds": max(r["seconds"] for r in ranks),
        "checkpoint_bytes": folder_bytes(ckpt),
        "consolidated_bytes": copy,
        "native_bytes": folder_bytes(ckpt) - folder_bytes(ckpt / "bigtrain"),
        "largest_tensor_bytes": ranks[0]["largest_tensor_bytes"],
        "peak_host_bytes_per_rank": [r["peak_host_bytes"] for r in ranks],
        "before_streaming_bytes_per_rank": copy,
        "run_seconds": round(time.perf_counter() - started, 1),
        "command": " ".join(cmd[1:]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["gpt2_124m", "gpt2_350m"])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ckpt-bench"))
    args = parser.parse_args()
    results = [run(m, args.workdir) for m in args.models]
    out = {"command": command(), **machine(), "results": results}
    gb = 1e9
    lines = header(out) + [
        "| model | params | save (s) | of which the copy (s) | checkpoint (GB) | native (GB) | copy (GB) "
        "| largest tensor (MB) | held per rank, streaming (MB) | held per rank before (GB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        held = " / ".join(f"{b / 1e6:.1f}" for b in r["peak_host_bytes_per_rank"])
        lines.append(
            f"| {r['model']} | {r['parameters'] / 1e6:.0f}M | {r['save_seconds']:.1f} "
            f"| {r['consolidated_seconds']:.1f} "
            f"| {r['checkpoint_bytes'] / gb:.2f} | {r['native_bytes'] / gb:.2f} | {r['consolidated_bytes'] / gb:.2f} "
            f"| {r['largest_tensor_bytes'] / 1e6:.1f} | {held} | {r['before_streaming_bytes_per_rank'] / gb:.2f} |"
        )
    write("checkpoint_save", out, lines)


if __name__ == "__main__":
    main()
