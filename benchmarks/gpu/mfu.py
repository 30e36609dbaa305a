"""bf16 MFU of a ~1B-parameter model on one GPU, through the real entry point.

    python3 benchmarks/gpu/mfu.py --out DIR [--data-path FILE] [--steps 30]

Trains `model=llama_1b` (16 layers, 2048 wide, GQA, SwiGLU; 1.1B parameters with a char
vocabulary, 1.2B with a 32k one) in bf16 with `launch/pretrain.py` on this machine's one GPU:
sequence 2048, micro-batch 4, global batch 32, no checkpoint. MFU is bigtrain's own (model FLOPs
over the GPU's datasheet bf16 peak, `bigtrain/metrics/peak.py`), the median over the steps after
the first 5 (compilation, allocator warm-up). Writes DIR/mfu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WARMUP = 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data-path", help="a text file (character vocabulary); default: the built-in corpus")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--model", default="llama_1b", help="a model preset (tiny: a CPU smoke test of this script)")
    args = parser.parse_args()
    data = ["data=shakespeare_char", f"data.path={args.data_path}"] if args.data_path else []
    run_root = Path(tempfile.mkdtemp(prefix="bigtrain-mfu-"))
    overrides = [
        f"model={args.model}",
        "precision=bf16",
        *data,
        f"trainer.micro_batch_size={args.micro_batch}",
        "trainer.global_batch_size=32",
        f"trainer.max_steps={args.steps}",
        "trainer.eval_interval=1000",
        "trainer.eval_iters=1",
        "trainer.sample_tokens=0",
        "trainer.save_at_end=false",
        "trainer.save_interval=0",
        "logging.progress_bar=false",
        "logging.tensorboard=false",
        f"run.root={run_root}",
        "run.name=mfu",
    ]
    cmd = [sys.executable, "launch/pretrain.py", *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "mfu.log").write_text(proc.stdout[-20000:] + proc.stderr[-20000:])
    if proc.returncode != 0:
        raise SystemExit(f"training failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in (run_root / "mfu" / "metrics.jsonl").read_text().splitlines()]
    steady = [r for r in rows if "mfu" in r and r["step"] > WARMUP]
    summary = json.loads((run_root / "mfu" / "summary.json").read_text())
    import torch  # noqa: PLC0415  (after the run: this process needs no GPU memory of its own)

    result = {
        "command": "python3 benchmarks/gpu/mfu.py " + " ".join(sys.argv[1:]),
        "train_command": " ".join(["python3", "launch/pretrain.py", *overrides]),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "steps": len(rows),
        "mfu_median": statistics.median(r["mfu"] for r in steady),
        "tflops_median": statistics.median(r["tflops"] for r in steady),
        "tokens_per_s_median": statistics.median(r["tokens_per_sec"] for r in steady),
        "peak_memory_gb": summary.get("peak_mem_gb_per_rank"),
        "mfu_peak_tflops": summary.get("mfu_peak_tflops"),
        "mfu_peak_source": summary.get("mfu_peak_source"),
        "loss_first_last": [rows[0]["loss"], rows[-1]["loss"]],
    }
    (args.out / "mfu.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
