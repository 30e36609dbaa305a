"""Peak dense matmul throughput per device, the denominator of MFU.

GPUs: vendor datasheet figures for dense (no sparsity) tensor-core math, by device name and
dtype. fp32 uses the TF32 figure when PyTorch allows TF32 matmuls, else plain FP32.
CPUs: no datasheet applies, so a short matmul benchmark measures the peak once per
(CPU model, threads, dtype) and caches it in ~/.cache/bigtrain/cpu_peak.json.
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


def measure_cpu_peak(dtype: torch.dtype, seconds: float = 1.0, n: int = 1024) -> float:
    """Best TFLOP/s of n×n matmuls over ~`seconds`."""
    gen = torch.Generator().manual_seed(0)  # never touch the training RNG streams
    a, b = torch.randn(n, n, generator=gen).to(dtype), torch.randn(n, n, generator=gen).to(dtype)
    best, deadline = 0.0, time.perf_counter() + seconds
    for _ in range(2):
        a @ b  # warm up
    while time.perf_counter() < deadline:
        t = time.perf_counter()
        for _ in range(4):
            a @ b
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - t) / 1e12)
    return best


def cpu_peak_tflops(dtype: str, cache: Path | None = None) -> float:
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float32}[dtype]
    cache = cache or Path(os.environ.get("BIGTRAIN_CACHE", Path.home() / ".cache" / "bigtrain")) / "cpu_peak.json"
    key = f"{_cpu_name()}|threads={torch.get_num_threads()}|{torch_dtype}"
    try:
        table = json.loads(cache.read_text())
    except (OSError, ValueError):
        table = {}
    if key not in table:
        table[key] = measure_cpu_peak(torch_dtype)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(table, indent=1))
        tmp.replace(cache)
    return table[key]


def peak_tflops(dtype: str, override: float | None = None) -> tuple[float | None, str]:
    """(peak TFLOP/s per device or None when unknown, where the figure came from)."""
    if override:
        return override, "config"
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        peak = gpu_peak_tflops(name, dtype, torch.backends.cuda.matmul.allow_tf32)
        if peak is None:
            return None, f"no peak figure for '{name}': set logging.peak_tflops=<TFLOP/s> for MFU"
        return peak, f"datasheet {name}"
    return cpu_peak_tflops(dtype), f"measured matmul on {_cpu_name()} ({torch.get_num_threads()} threads)"
