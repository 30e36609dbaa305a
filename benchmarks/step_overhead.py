"""Where a small model's step goes: DeepSpeed engine vs a plain loop vs an independent model.

    python benchmarks/step_overhead.py --rounds 8 --steps 60

One process, the shakespeare_char_cpu model (4 layers, 128 dim, block 64, batch 12) on random
tokens, three ways, timed in interleaved rounds so that the machine's drifting speed hits all
of them alike:
  engine     bigtrain's DeepSpeed engine (build_engine) with bigtrain's own clipping, as the
             trainer runs it on the plain path (ZeRO 0, fp32, one process);
  plain      the same bigtrain GPT module with torch AdamW and clip_grad_norm_;
  reference  benchmarks/reference_shakespeare.py's model (batch-first, nn.Linear) the same way.
`engine / plain` is the framework's overhead, `plain / reference` the model's. Both position
types. Writes benchmarks/results/step_overhead_cpu.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from bigtrain.entry.process import setup_process

ROOT = Path(__file__).resolve().parents[1]
setup_process()  # before DeepSpeed and megatron-core load, as every entry point does

import reference_shakespeare  # noqa: E402  (beside this file)

from bigtrain.config import validate  # noqa: E402
from bigtrain.config.hydra import compose  # noqa: E402
from bigtrain.model.gpt import GPT, lm_loss  # noqa: E402
from bigtrain.model.layers import Vocab  # noqa: E402
from bigtrain.parallel.engine import build_engine  # noqa: E402
from bigtrain.parallel.state import init_distributed, seed_everything, tensor_parallel_plan  # noqa: E402

VOCAB, BATCH, BLOCK = 65, 12, 64


def engine_step(engine, x, y, mask, lm_loss):
    def step():  # bigtrain's clipper runs inside engine.step(), as in training
        engine.backward(lm_loss(engine(x), y, mask))
        engine.step()

    return step


def plain_step(model, loss_fn):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.99))

    def step():
        loss_fn(model).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def measure(position: str, rounds: int, steps: int) -> dict:
    cfg = compose(["experiment=shakespeare_char_cpu", "data.path=unused.txt", f"model.position={position}"])
    ranks = init_distributed(validate(cfg, world_size=1))
    seed_everything(0, ranks)
    vocab = Vocab.of(VOCAB, cfg.model.pad_vocab_multiple)
    tp = tensor_parallel_plan(cfg.parallel, ranks)
    engine = build_engine(cfg, ranks, vocab, tp, lm_loss, log=lambda *a: None).engine
    plain_model = GPT(cfg.model, tp, vocab, seed=0)
    reference = reference_shakespeare.Model(VOCAB, rotary=position == "rope")
    x, y = torch.randint(0, VOCAB, (BATCH, BLOCK)), torch.randint(0, VOCAB, (BATCH, BLOCK))
    mask = torch.ones(BATCH, BLOCK)
    ways = {
        "engine": engine_step(engine, x, y, mask, lm_loss),
        "plain": plain_step(plain_model, lambda m: lm_loss(m(x), y, mask)),
        "reference": plain_step(reference, lambda m: m(x, y)),
    }
    times = {name: [] for name in ways}
    for _ in range(rounds):
        for name, step in ways.items():
            for _ in range(5):  # warm up after the other ways ran
                step()
            start = time.perf_counter()
            for _ in range(steps):
                step()
            times[name].append((time.perf_counter() - start) / steps * 1e3)
    ms = {name: statistics.median(t) for name, t in times.items()}
    return {
        "position": position,
        "ms_per_step": ms,
        "engine_over_plain": ms["engine"] / ms["plain"],
        "plain_over_reference": ms["plain"] / ms["reference"],
        "tokens_per_sec": {name: BATCH * BLOCK / (v / 1e3) for name, v in ms.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    results = [measure(position, args.rounds, args.steps) for position in ("learned", "rope")]
    for r in results:
        print(json.dumps(r), flush=True)
    command = "python " + " ".join(sys.argv)
    out = ROOT / "benchmarks" / "results" / "step_overhead_cpu"
    out.with_suffix(".json").write_text(json.dumps({"command": command, "results": results}, indent=1))
    lines = [
        f"`{command}`",
        "",
        "| positions | engine ms/step | plain loop ms/step | reference ms/step | engine / plain | plain / reference |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['position']} | {r['ms_per_step']['engine']:.2f} | {r['ms_per_step']['plain']:.2f} | "
        f"{r['ms_per_step']['reference']:.2f} | {r['engine_over_plain']:.3f} | {r['plain_over_reference']:.3f} |"
        for r in results
    ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
