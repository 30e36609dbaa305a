"""Peak dense matmul throughput per device, the denominator of MFU.

GPUs: vendor datasheet figures for dense (no sparsity) tensor-core math, by device name and
dtype. fp32 uses the TF32 figure when PyTorch allows TF32 matmuls, else plain FP32.
CPUs: no datasheet applies, so a short matmul benchmark of the dtype in use measures the peak per
(CPU model, threads, dtype) and caches it in ~/.cache/bigtrain/cpu_peak.json (or $BIGTRAIN_CACHE).
A measurement taken while the machine was busy would be too low and make MFU impossible, so the
cache keeps the highest of the first runs' measurements, and a run whose achieved TFLOP/s exceeds
the figure measures again and, if need be, raises the figure to what it achieved.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

# name fragment -> TFLOP/s for (bf16/fp16, tf32, fp32); the first matching fragment wins.
GPU_PEAKS = [
    ("H100 PCIe", (756.0, 378.0, 51.0)),
    ("H100", (989.4, 494.7, 66.9)),
    ("H200", (989.4, 494.7, 66.9)),
    ("GH200", (989.4, 494.7, 66.9)),
    ("B200", (2250.0, 1100.0, 80.0)),
    ("A100", (312.0, 156.0, 19.5)),
    ("A10G", (125.0, 62.5, 31.2)),
    ("L40S", (362.0, 183.0, 91.6)),
    ("L4", (121.0, 60.0, 30.3)),
    ("V100", (125.0, 15.7, 15.7)),  # no bf16: the fp16 figure
]


def gpu_peak_tflops(name: str, dtype: str, tf32: bool) -> float | None:
    for fragment, (half, tf32_peak, fp32) in GPU_PEAKS:
        if fragment in name:
            if dtype in ("bf16", "fp16"):
                return half
            return tf32_peak if tf32 else fp32
    return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


CPU_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MEASUREMENTS = 3  # runs that each measure again (keeping the highest) before the cached figure is trusted


def measure_cpu_peak(dtype: torch.dtype, seconds: float = 1.0, sizes: tuple[int, ...] = (512, 1024, 2048)) -> float:
    """Best TFLOP/s of square n×n matmuls, one timed matmul at a time, over ~`seconds`.

    The highest of many short timings: another process on the machine lowers some of them, not
    the best. Larger sizes are tried only while one matmul takes under a tenth of the budget (a
    CPU without bf16 units runs bf16 at a few GFLOP/s).
    """
    gen = torch.Generator().manual_seed(0)  # never touch the training RNG streams
    best, start = 0.0, time.perf_counter()
    for i, n in enumerate(sizes):
        a, b = torch.randn(n, n, generator=gen).to(dtype), torch.randn(n, n, generator=gen).to(dtype)
        a @ b  # warm up
        deadline = start + seconds * (i + 1) / len(sizes)
        while True:
            t = time.perf_counter()
            a @ b
            took = time.perf_counter() - t
            best = max(best, 2 * n**3 / took / 1e12)
            if time.perf_counter() >= deadline:
                break
        if took > seconds / 10:
            break
    return best


class Peak:
    """The MFU denominator per device, where it came from, and on CPUs a cached measurement that
    only ever rises: a figure measured while the machine was busy is replaced by a higher one from
    a later run, and a run that achieves more than the figure measures again at once."""

    def __init__(
        self,
        tflops: float | None,
        source: str,
        cache: Path | None = None,
        key: str = "",
        dtype: torch.dtype | None = None,
    ):
        self.tflops, self.source = tflops, source
        self._cache, self._key, self._dtype = cache, key, dtype
        self._remeasured = False

    def cover(self, achieved: float) -> None:
        """Make sure the peak is at least what this run achieved, so MFU never exceeds 1."""
        if self._cache is None or self.tflops is None or achieved <= self.tflops:
            return
        if not self._remeasured:
            self._remeasured = True
            self.tflops = max(self.tflops, measure_cpu_peak(self._dtype))
        if achieved > self.tflops:
            self.tflops = achieved
            raised = "; raised to this run's achieved TFLOP/s"
            if not self.source.endswith(raised):
                self.source += raised
        _update_cache(self._cache, self._key, self.tflops, count=0)


def default_cache() -> Path:
    return Path(os.environ.get("BIGTRAIN_CACHE", Path.home() / ".cache" / "bigtrain")) / "cpu_peak.json"


def _read_cache(cache: Path) -> dict:
    try:
        table = json.loads(cache.read_text())
    except (OSError, ValueError):
        return {}
    return table if isinstance(table, dict) else {}


def _update_cache(cache: Path, key: str, tflops: float, count: int) -> dict:
    """Merge one figure into the cache: the highest figure wins, measurements are counted."""
    table = _read_cache(cache)
    old = table.get(key)
    old = old if isinstance(old, dict) else {"tflops": float(old or 0.0), "measurements": int(bool(old))}
    entry = {"tflops": max(old["tflops"], tflops), "measurements": old["measurements"] + count}
    table[key] = entry
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(table, indent=1))
        tmp.replace(cache)
    except OSError:
        pass  # a read-only cache only costs a measurement next run
    return entry


def cpu_peak(dtype: str, cache: Path | None = None) -> Peak:
    """The CPU's matmul peak for `dtype` at this process's thread count, measured and cached."""
    torch_dtype = CPU_DTYPES[dtype]
    cache = cache or default_cache()
    threads = torch.get_num_threads()
    key = f"{_cpu_name()}|threads={threads}|{torch_dtype}"
    entry = _read_cache(cache).get(key)
    if not isinstance(entry, dict) or entry.get("measurements", 0) < MEASUREMENTS:
        entry = _update_cache(cache, key, measure_cpu_peak(torch_dtype), count=1)
    source = (
        f"measured {dtype} matmul on {_cpu_name()}, {threads} threads, "
        f"best of {entry['measurements']} runs, cached in {cache}"
    )
    return Peak(entry["tflops"], source, cache, key, torch_dtype)


def peak_tflops(dtype: str, override: float | None = None) -> Peak:
    """The peak TFLOP/s per device for `dtype` (tflops None when unknown), with its source."""
    if override:
        return Peak(override, "logging.peak_tflops")
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        peak = gpu_peak_tflops(name, dtype, torch.backends.cuda.matmul.allow_tf32)
        if peak is None:
            return Peak(None, f"no peak figure for '{name}': set logging.peak_tflops=<TFLOP/s> for MFU")
        return Peak(peak, f"datasheet {name} {dtype}")
    return cpu_peak(dtype)
