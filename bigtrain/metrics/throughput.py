"""Step time and token counts → tokens/s, achieved TFLOP/s per device, MFU and memory."""

from __future__ import annotations

import resource
import sys
from dataclasses import dataclass

import torch

from bigtrain.metrics.peak import Peak


@dataclass(frozen=True)
class Meter:
    tokens_per_step: int  # global batch × sequence length
    flops_per_token: int  # training FLOPs (bigtrain.model.flops)
    devices: int  # world size
    peak: Peak  # per device

    def measure(self, seconds: float) -> dict:
        tokens_per_sec = self.tokens_per_step / seconds
        tflops = tokens_per_sec * self.flops_per_token / self.devices / 1e12
        self.peak.cover(tflops)
        mfu = tflops / self.peak.tflops if self.peak.tflops else None
        return {
            "step_time": seconds,
            "tokens_per_sec": tokens_per_sec,
            "tflops": tflops,
            "mfu": mfu,
            "mem_gb": peak_memory_gb(),
        }


def peak_memory_gb() -> float:
    """Peak allocated GPU memory, or on CPU the process's peak resident set."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**30 if sys.platform == "darwin" else 2**20)  # bytes on macOS, KiB on Linux
