"""bigtrain-prepare throughput and memory: MB/s and tokens/s with 1 and 2 workers, peak RSS.

    python benchmarks/prepare_throughput.py --mb 500 --scale 4 --workdir /tmp/prep-bench

Generates a jsonl corpus of `--mb` MB from the running Python's standard-library sources (each
file one document, repeated with a pass number so dedupe would keep them), and one `--scale`
times larger; neither is committed. Trains one BPE tokenizer (vocab 32000) on a 20 MB corpus of the same kind,
then times `launch/prepare_data.py` with that tokenizer (kind=sentencepiece) as a subprocess:
1 and 2 workers on the small corpus, 2 workers on the large one. Peak RSS is the largest sum of
the RSS of the whole process tree (the main process and its workers), sampled every 0.1 s.
Writes benchmarks/results/prepare_throughput.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

import psutil
from report import ROOT, command, write  # beside this file


def make_corpus(path: Path, megabytes: int) -> int:
    """A jsonl file of about `megabytes` MB; returns its size in bytes."""
    if path.is_file() and path.stat().st_size >= megabytes * 1_000_000:
        return path.stat().st_size
    sources = []
    for file in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        try:
            sources.append(file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError):
            continue
    written, rounds = 0, 0
    with open(path, "w") as out:
        while written < megabytes * 1_000_000:
            for text in sources:
                line = json.dumps({"text": f"# pass {rounds}\n{text}"}) + "\n"
                out.write(line)
                written += len(line)
                if written >= megabytes * 1_000_000:
                    break
            rounds += 1
    return path.stat().st_size


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run(args: list[str]) -> tuple[float, int, str]:
    """Wall seconds, peak tree RSS in bytes, stdout of one preprocessing run."""
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's bigtrain, in the workers too
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak, handle = 0, psutil.Process(proc.pid)

    def sample():
        nonlocal peak
        while proc.poll() is None:
            peak = max(peak, tree_rss(handle))
            time.sleep(0.1)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    out, _ = proc.communicate()
    watcher.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{out[-3000:]}")
    return time.perf_counter() - start, peak, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=500)
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--workdir", default="/tmp/bigtrain-prepare-bench")
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    small, large = work / f"corpus_{args.mb}mb.jsonl", work / f"corpus_{args.mb * args.scale}mb.jsonl"
    sizes = {small: make_corpus(small, args.mb), large: make_corpus(large, args.mb * args.scale)}
    sample = work / "tokenizer_sample.jsonl"
    make_corpus(sample, 20)
    prepare = [sys.executable, "launch/prepare_data.py", "progress_bar=false"]
    seconds, _, _ = run(
        [
            *prepare,
            f"inputs=[{sample}]",
            f"output={work / 'tok'}",
            "tokenizer.kind=bpe",
            "tokenizer.vocab_size=32000",
            "tokenizer.sample_bytes=20000000",
            "workers=2",
        ]
    )
    print(f"tokenizer trained on 20 MB in {seconds:.0f} s", flush=True)
    tokenizer = f"tokenizer.path={work / 'tok.tokenizer.model'}"
    results = []
    for corpus, workers in ((small, 1), (small, 2), (large, 2)):
        out = work / f"out_{corpus.stem}_{workers}"
        seconds, peak, _ = run(
            [
                *prepare,
                f"inputs=[{corpus}]",
                f"output={out}",
                "tokenizer.kind=sentencepiece",
                tokenizer,
                f"workers={workers}",
            ]
        )
        summary = json.loads(out.with_name(out.name + ".summary.json").read_text())
        row = {
            "corpus_mb": round(sizes[corpus] / 1e6),
            "workers": workers,
            "wall_s": round(seconds, 1),
            "mb_per_s": round(sizes[corpus] / 1e6 / seconds, 2),
            "tokens": summary["tokens"],
            "tokens_per_s": round(summary["tokens"] / seconds),
            "peak_rss_mb": round(peak / 1e6),
        }
        print(json.dumps(row), flush=True)
        results.append(row)
        for ext in (".bin", ".idx"):
            out.with_name(out.name + ext).unlink()
    speedup = results[0]["wall_s"] / results[1]["wall_s"]
    report = {"command": command(), "results": results, "speedup_2_over_1": round(speedup, 2)}
    lines = [
        f"`{report['command']}` (sentencepiece BPE 32000, jsonl from the stdlib sources; wall time includes start-up)",
        "",
        "| corpus MB | workers | wall s | MB/s | tokens/s | peak RSS MB (whole tree) |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['corpus_mb']} | {r['workers']} | {r['wall_s']} | {r['mb_per_s']} | {r['tokens_per_s']:,} | "
        f"{r['peak_rss_mb']} |"
        for r in results
    ]
    lines += ["", f"2 workers / 1 worker: {speedup:.2f}×"]
    write("prepare_throughput", report, lines)


if __name__ == "__main__":
    main()
