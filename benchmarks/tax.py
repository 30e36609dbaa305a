"""The framework tax: bigtrain's training step against a bare eager PyTorch loop of the same model,
batch and corpus. The one tool for that question (bigtrain's speed, compiled and bf16 included,
and where the difference goes).

    python benchmarks/tax.py --data-path ../shared/data/tinyshakespeare.txt [--cases preset 10.8M ...] \
        [--parts] [--quality]

Each case runs in its own process. There `bigtrain.entry.run.run` trains as `launch/pretrain.py`
would (the preset's trainer: prefetching data pipeline, bigtrain's clipping, metrics sinks,
evaluation on the preset's cadence), and after every block of its steps (20; 4 for 10.8M) the
bare loop (`benchmarks/bare.py`: same model shape, batch and corpus; eager, fp32 or bf16
autocast as the case's precision) runs as many steps in the same process, so that this machine's
drifting speed hits both alike. A bigtrain step is the wall time from one step's end to the next
one's (logging and evaluation included, timed by a step callback); a bare step is one call of its
loop body. Each block pair gives a ratio, bare step time / bigtrain step time (above 1: bigtrain
is faster); the case's figure is the median over pairs, with the quartiles. Each side's first
steps (warm-up, compilation) are left out. Process-level runs, each loop started fresh, spread
over ±20% from round to round on this shared 2-core machine, which hides a few percent of tax.

Models: preset = experiment=shakespeare_char_cpu (4 layers, 128 dim, block 64, batch 12, rotary);
10.8M = 6 layers, 384 dim, 6 heads, block 256, batch 8, learned positions. The bf16 cases run
where bf16 matmuls are faster than fp32 ones (a GPU, or a CPU with AMX or AVX512-BF16; both
peaks are measured in this run and written down); their MFU is bigtrain's own metric against
the measured bf16 peak.

--parts splits a step three ways, in one process, in interleaved rounds, for both position
types: `engine` (bigtrain's DeepSpeed engine and clipping, as the trainer drives it), `plain`
(the same bigtrain GPT module under torch AdamW and clip_grad_norm_), `reference`
(`reference_shakespeare.py`'s independent model the same way): engine / plain is DeepSpeed's
and bigtrain's step machinery, plain / reference the model's layout.

--quality trains the preset to step 2000 eager and compiled and compares validation loss.
Writes benchmarks/results/tax_<device>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from bare import bare_step, shape_overrides  # beside this file, as report.py
from report import PYTHON, ROOT, command, device_tag, header, launch, machine, read_metrics, write

PRESET = {"layers": 4, "heads": 4, "dim": 128, "block": 64, "batch": 12, "position": "rope"}
MID = {"layers": 6, "heads": 6, "dim": 384, "block": 256, "batch": 8, "position": "learned"}
# name: (model shape, precision, bigtrain's extra overrides, steps per side, steps per block, warm-up steps, target)
CASES = {
    "preset": (PRESET, "fp32", [], 600, 20, 20, 0.97),
    # the bare loop's AdamW is torch's default (foreach on CPU); bigtrain's default is fused
    "preset-foreach": (PRESET, "fp32", ["optim.implementation=foreach"], 600, 20, 20, 0.97),
    # the preset compiles the whole model (trainer.compile_scope=model in its yaml)
    "preset-compiled": (PRESET, "fp32", ["trainer.compile=true"], 600, 20, 20, 1.2),
    "10.8M": (MID, "fp32", [], 48, 4, 8, 0.97),
    "10.8M-bf16": (MID, "bf16", [], 48, 4, 8, 0.97),
    "10.8M-bf16-compiled": (MID, "bf16", ["trainer.compile=true"], 48, 4, 8, None),
}


def overrides(model: dict, precision: str, extra: list[str], steps: int, data: str, run_dir: Path) -> list[str]:
    """The preset with this shape; everything else (clipping, logging, evaluation) as users run it."""
    return [
        "experiment=shakespeare_char_cpu",
        f"data.path={data}",
        *shape_overrides(model),
        f"precision={precision}",
        f"trainer.micro_batch_size={model['batch']}",
        f"trainer.global_batch_size={model['batch']}",
        f"trainer.max_steps={steps}",
        "trainer.sample_tokens=0",
        "trainer.save_at_end=false",
        "logging.progress_bar=false",
        f"trainer.ckpt_dir={run_dir / 'checkpoints'}",
        *extra,
    ]


class Turns:
    """A step callback: bigtrain's step time from one step's end to the next (its logging,
    evaluation and checkpoints included), and the bare loop's block after every `block` steps."""

    def __init__(self, bare, block: int):
        self.bare, self.block = bare, block
        self.big: list[float] = []
        self.bare_times: list[float] = []
        self.pairs: list[tuple[int, int]] = []  # (end of a bigtrain block, end of its bare block)
        self.last: float | None = None

    def step_end(self, step: int, metrics: dict) -> None:
        now = time.perf_counter()
        if self.last is not None:
            self.big.append(now - self.last)
        done = len(self.big)
        if done and done % self.block == 0:
            for _ in range(self.block):
                start = time.perf_counter()
                self.bare()
                self.bare_times.append(time.perf_counter() - start)
            self.pairs.append((done, len(self.bare_times)))
        self.last = time.perf_counter()


def measure(case: str, data: str) -> dict:
    """One case, in this process: bigtrain's run with the bare loop's blocks between its steps."""
    from bigtrain.entry.process import setup_process  # noqa: PLC0415  (before DeepSpeed loads)

    setup_process()
    from bigtrain.config.hydra import compose  # noqa: PLC0415
    from bigtrain.entry.run import run  # noqa: PLC0415

    model, precision, extra, steps, block, skip, target = CASES[case]
    bare = bare_step(data, **model, dtype=precision)
    for _ in range(skip):
        bare()
    turns = Turns(bare, block)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "tax"
        summary = run(compose(overrides(model, precision, extra, steps, data, run_dir)), run_dir, callbacks=[turns])
        rows = [r for r in read_metrics(run_dir) if r["step"] > skip and "tflops" in r]
    ratios, big_blocks, bare_blocks = [], [], []
    for end_big, end_bare in turns.pairs:
        if end_big - block < skip:  # warm-up (and compilation) blocks
            continue
        big_blocks.append(statistics.median(turns.big[end_big - block : end_big]))
        bare_blocks.append(statistics.median(turns.bare_times[end_bare - block : end_bare]))
        ratios.append(bare_blocks[-1] / big_blocks[-1])
    if len(ratios) < 4:
        raise SystemExit(f"{case}: only {len(ratios)} block pairs after the warm-up: raise the steps")
    quartiles = statistics.quantiles(ratios, n=4)
    tokens = model["batch"] * model["block"]
    mfu = [r["mfu"] for r in rows if r.get("mfu") is not None]
    return {
        "case": case,
        "model": model,
        "precision": precision,
        "overrides": extra,
        "block_pairs": len(ratios),
        "steps_per_block": block,
        "bare_over_bigtrain": statistics.median(ratios),
        "quartiles": [quartiles[0], quartiles[2]],
        "range": [min(ratios), max(ratios)],
        "target": target,
        "bigtrain_tokens_per_sec": tokens / statistics.median(big_blocks),
        "bare_tokens_per_sec": tokens / statistics.median(bare_blocks),
        "tflops": statistics.median(r["tflops"] for r in rows),
        "mfu": statistics.median(mfu) if mfu and precision == "bf16" else None,
        "val_loss": summary["val_loss"],
        "ratios": ratios,
    }


def parts(position: str, rounds: int = 8, steps: int = 60) -> dict:
    """The step three ways (engine, plain, reference) on random tokens, interleaved rounds."""
    from bigtrain.entry.process import setup_process  # noqa: PLC0415  (before DeepSpeed loads)

    setup_process()
    import reference_shakespeare  # noqa: PLC0415  (beside this file)

    from bigtrain.config import validate  # noqa: PLC0415
    from bigtrain.config.hydra import compose  # noqa: PLC0415
    from bigtrain.model.gpt import GPT, lm_loss  # noqa: PLC0415
    from bigtrain.model.layers import Vocab  # noqa: PLC0415
    from bigtrain.parallel.engine import build_engine  # noqa: PLC0415
    from bigtrain.parallel.state import init_distributed, seed_everything, tensor_parallel_plan  # noqa: PLC0415

    vocab_size, batch, block = 65, PRESET["batch"], PRESET["block"]
    cfg = compose(["experiment=shakespeare_char_cpu", "data.path=unused.txt", f"model.position={position}"])
    ranks = init_distributed(validate(cfg, world_size=1))
    seed_everything(0, ranks)
    vocab = Vocab.of(vocab_size, cfg.model.pad_vocab_multiple)
    tp = tensor_parallel_plan(cfg.parallel, ranks)
    engine = build_engine(cfg, ranks, vocab, tp, lm_loss, log=lambda *a: None).engine
    x, y = torch.randint(0, vocab_size, (batch, block)), torch.randint(0, vocab_size, (batch, block))
    mask = torch.ones(batch, block)

    def engine_step():  # bigtrain's clipper runs inside engine.step(), as in training
        engine.backward(lm_loss(engine(x), y, mask))
        engine.step()

    def plain(model, loss_fn):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.99))

        def step():
            loss_fn(model).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    ways = {
        "engine": engine_step,
        "plain": plain(GPT(cfg.model, tp, vocab, seed=0), lambda m: lm_loss(m(x), y, mask)),
        "reference": plain(reference_shakespeare.Model(vocab_size, rotary=position == "rope"), lambda m: m(x, y)),
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
    }


def val_loss_at_2000(data: str, compiled: bool, work: Path) -> float:
    run_dir = work / f"quality-{compiled}"
    cmd = [PYTHON, "launch/pretrain.py", "experiment=shakespeare_char_cpu", f"data.path={data}"]
    cmd += [f"trainer.compile={str(compiled).lower()}", "trainer.sample_tokens=0", "logging.progress_bar=false"]
    cmd += ["logging.tensorboard=false", "trainer.save_at_end=false", f"hydra.run.dir={run_dir}"]
    launch(cmd, timeout=3600)
    return json.loads((run_dir / "summary.json").read_text())["val_loss"]


def child(args: list[str]) -> dict:
    """Run this script's `--one` mode in a fresh process (one case, or one position's parts)."""
    proc = subprocess.run([PYTHON, __file__, *args], cwd=ROOT, capture_output=True, text=True, timeout=3600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def bf16_skip() -> tuple[str | None, dict]:
    """Why the bf16 cases cannot say anything here (None: they run), and both matmul peaks."""
    from bigtrain.metrics.peak import measure_cpu_peak  # noqa: PLC0415

    if torch.cuda.is_available():
        return None, {}
    peaks = {"fp32": measure_cpu_peak(torch.float32, 2.0), "bf16": measure_cpu_peak(torch.bfloat16, 2.0)}
    if peaks["bf16"] >= peaks["fp32"]:
        return None, peaks
    return (
        f"bf16 cases skipped: this CPU's bf16 matmuls run at {peaks['bf16']:.4f} TFLOP/s, below fp32's "
        f"{peaks['fp32']:.3f} (no AMX or AVX512-BF16 units)"
    ), peaks


def markdown(report: dict) -> list[str]:
    lines = header(report)
    if report["matmul_peaks_tflops"]:
        lines += [", ".join(f"{k} matmul peak {v:.4f} TFLOP/s" for k, v in report["matmul_peaks_tflops"].items()), ""]
    if report["skipped"]:
        lines += [report["skipped"], ""]
    lines += [
        "| case | bigtrain tok/s | bare eager tok/s | bigtrain speed / bare (median of block pairs) | quartiles | "
        "block pairs | MFU | target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else ""
        target = f"≥ {r['target']}×" if r["target"] else ""
        lines.append(
            f"| {r['case']} | {r['bigtrain_tokens_per_sec']:,.0f} | {r['bare_tokens_per_sec']:,.0f} | "
            f"{r['bare_over_bigtrain']:.3f}× | {r['quartiles'][0]:.3f}-{r['quartiles'][1]:.3f} | "
            f"{r['block_pairs']} × {r['steps_per_block']} steps | {mfu} | {target} |"
        )
    if report["parts"]:
        lines += ["", "Where a preset step goes (`--parts`, one process, interleaved rounds):", ""]
        lines += ["| positions | engine ms/step | plain loop ms/step | reference ms/step | engine / plain | "]
        lines[-1] += "plain / reference |"
        lines += ["|---|---|---|---|---|---|"]
        for p in report["parts"]:
            ms = p["ms_per_step"]
            lines.append(
                f"| {p['position']} | {ms['engine']:.2f} | {ms['plain']:.2f} | {ms['reference']:.2f} | "
                f"{p['engine_over_plain']:.3f} | {p['plain_over_reference']:.3f} |"
            )
    if report["quality_at_2000"]:
        q = report["quality_at_2000"]
        lines += ["", f"Validation loss at step 2000 (preset): eager {q['eager']:.4f}, compiled {q['compiled']:.4f}"]
        lines[-1] += f", difference {q['difference']:+.2e}"
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-path", required=True)
    parser.add_argument("--cases", nargs="*", choices=list(CASES), default=list(CASES))
    parser.add_argument("--parts", action="store_true", help="also split the preset's step three ways")
    parser.add_argument("--quality", action="store_true", help="also compare eager and compiled at step 2000")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a child process's case, or parts:<position>
    args = parser.parse_args()
    data = str(Path(args.data_path).resolve())
    if args.one:
        kind, _, name = args.one.partition(":")
        result = parts(name) if kind == "parts" else measure(args.one, data)
        print("RESULT " + json.dumps(result), flush=True)
        return
    skipped, peaks = bf16_skip() if any(CASES[c][1] == "bf16" for c in args.cases) else (None, {})
    results = []
    for case in args.cases:
        if skipped and CASES[case][1] == "bf16":
            continue
        results.append(child(["--data-path", data, "--one", case]))
        r = results[-1]
        print(f"{case}: bare/bigtrain {r['bare_over_bigtrain']:.3f} ({r['block_pairs']} block pairs)", flush=True)
    split = [child(["--data-path", data, "--one", f"parts:{p}"]) for p in ("learned", "rope")] if args.parts else []
    quality = None
    if args.quality:
        with tempfile.TemporaryDirectory() as tmp:
            eager, compiled = val_loss_at_2000(data, False, Path(tmp)), val_loss_at_2000(data, True, Path(tmp))
        quality = {"eager": eager, "compiled": compiled, "difference": compiled - eager}
    report = {"command": command(), **machine(), "matmul_peaks_tflops": peaks, "skipped": skipped}
    report |= {"results": results, "parts": split, "quality_at_2000": quality}
    write(f"tax_{device_tag()}", report, markdown(report))


if __name__ == "__main__":
    main()
