"""MFU: the peak is the dtype's, never below what a run achieves, and names its source."""

import json

import pytest
import torch

from bigtrain.metrics import peak as peaks
from bigtrain.metrics.throughput import Meter
from bigtrain.train.spikes import SpikeDetector


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cpu_peak.json"


def key(dtype: str) -> str:
    return f"{peaks._cpu_name()}|threads={torch.get_num_threads()}|{peaks.CPU_DTYPES[dtype]}"


def test_measurement_times_at_least_one_matmul_even_when_slow():
    # A budget shorter than one matmul (bf16 on a CPU without bf16 units) still yields a figure.
    assert peaks.measure_cpu_peak(torch.float32, seconds=1e-6) > 0


def test_first_runs_measure_again_and_keep_the_highest(cache):
    cache.write_text(json.dumps({key("fp32"): {"tflops": 1e-6, "measurements": 1}}))  # measured under load
    peak = peaks.cpu_peak("fp32", cache)
    entry = json.loads(cache.read_text())[key("fp32")]
    assert entry["measurements"] == 2 and entry["tflops"] == peak.tflops > 1e-3
    assert "fp32 matmul" in peak.source and "best of 2 runs" in peak.source
    peaks.cpu_peak("fp32", cache)
    assert json.loads(cache.read_text())[key("fp32")]["measurements"] == peaks.MEASUREMENTS


def test_mfu_never_exceeds_one_after_a_cache_written_under_load(cache):
    # A trusted (3 measurements) but far too low figure, as a busy machine would leave behind.
    low = 1e-5
    cache.write_text(json.dumps({key("fp32"): {"tflops": low, "measurements": peaks.MEASUREMENTS}}))
    peak = peaks.cpu_peak("fp32", cache)
    assert peak.tflops == low
    meter = Meter(tokens_per_step=1000, flops_per_token=10**9, devices=1, peak=peak)
    record = meter.measure(seconds=1.0)  # 1 TFLOP/s achieved: 1e5 × the cached peak
    assert record["tflops"] == pytest.approx(1.0)
    assert 0 < record["mfu"] <= 1.0
    assert peak.tflops >= record["tflops"]  # re-measured, then raised to what the run achieved
    assert "raised to this run's achieved" in peak.source
    assert json.loads(cache.read_text())[key("fp32")]["tflops"] == peak.tflops  # the cache learned it
    later = meter.measure(seconds=2.0)
    assert later["mfu"] == pytest.approx(0.5 * record["mfu"])


def test_peak_is_the_dtype_in_use(cache):
    fp32, bf16 = peaks.cpu_peak("fp32", cache), peaks.cpu_peak("bf16", cache)
    table = json.loads(cache.read_text())
    assert {key("fp32"), key("bf16")} <= table.keys()
    assert "bf16 matmul" in bf16.source and fp32.tflops > 0 and bf16.tflops > 0


def test_override_and_gpu_datasheet():
    peak = peaks.peak_tflops("bf16", override=123.0)
    assert (peak.tflops, peak.source) == (123.0, "logging.peak_tflops")
    assert peaks.gpu_peak_tflops("NVIDIA H100 80GB HBM3", "bf16", tf32=True) == 989.4
    assert peaks.gpu_peak_tflops("NVIDIA H100 PCIe", "fp32", tf32=False) == 51.0
    assert peaks.gpu_peak_tflops("Some Future GPU", "bf16", tf32=True) is None


def test_spike_detector_flags_only_outliers_of_its_window():
    detector = SpikeDetector(window=20, threshold=6.0)
    noisy = [3.0 + 0.01 * ((i * 7) % 5 - 2) for i in range(30)]  # ±0.02 around 3.0
    scores = [detector.zscore(x) for x in noisy]
    assert scores[:8] == [None] * 8 and not any(detector.is_spike(s) for s in scores)
    spike = detector.zscore(3.5)
    assert detector.is_spike(spike) and spike > 20
    assert not detector.is_spike(detector.zscore(2.5))  # a drop is not a spike
