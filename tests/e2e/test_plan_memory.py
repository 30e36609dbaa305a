"""The planner against real runs (issue 13): gpt2_124m's shape (model states dominate) trains 3
fp32 steps on 1 or 2 CPU ranks per layout, and rank 0's peak resident memory (metrics.jsonl's
mem_gb at the last step, the process's ru_maxrss) is within 10% of the planner's
prediction for that rank, fixed overhead included (`compare` in benchmarks/plan_memory.py).

Five layouts of different kinds are here: plain, ZeRO-1 and ZeRO-3 over data parallelism,
tensor parallelism and a pipeline. benchmarks/plan_memory.py also runs zero2 dp2, whose measured
peak moves between runs by ~14% (README, "Planning a layout"), and tp2 x dp2 on four ranks.

The planner predicts the peak a rank can reach; one run can stay below it. pp2's rank 0 read
1.783-1.856 GB in ten quiet runs and 1.653-1.872 GB in ten beside a busy core
(benchmarks/results/plan_memory_repeat*.md), and 1.664 and 1.693 GB in two CI runs: a low run holds
one parameter-sized buffer (0.17 GB) less at its peak in ZeRO-1's step, as thread timing goes. So a
layout the planner over-predicts by more than 10% runs again, up to three times in all, and the
highest peak counts. An under-prediction fails at once: another run could only read higher.

The spread is glibc's (README, "Planning a layout"): freed blocks stay resident in per-thread arenas
depending on thread timing; with MALLOC_MMAP_THRESHOLD_=1048576 pp2 reads 1.516-1.530 GB steadily,
a peak the planner, calibrated on the default allocator, over-predicts by 23%."""

import sys

import pytest

from bigtrain.parallel.plan import GB
from tests.helpers.launch import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
from plan_memory import compare  # noqa: E402  (the benchmark's comparison; tests may import benchmarks, not the reverse)

pytestmark = [pytest.mark.e2e, pytest.mark.distributed, pytest.mark.slow]

RUNS = 3  # the most runs one layout gets


@pytest.mark.parametrize("name", ["single", "zero1_dp2", "zero3_dp2", "tp2", "pp2"])
def test_planner_memory_matches_a_real_run(name, corpus, cache_dir, tmp_path):
    peaks = []
    for attempt in range(RUNS):
        measured, predicted = compare(name, corpus, tmp_path / f"run{attempt}")
        peaks.append(measured)
        if predicted.total_bytes / max(peaks) <= 1.1:
            break
    measured = max(peaks)
    detail = ", ".join(f"{k} {v / GB:.3f}" for k, v in predicted.memory.items())
    ratio = predicted.total_bytes / measured
    runs = ", ".join(f"{p / GB:.3f}" for p in peaks)
    print(f"{name}: measured {runs} GB, predicted {predicted.total_bytes / GB:.3f} GB ({detail})")
    assert 0.9 <= ratio <= 1.1, f"{name}: predicted/measured {ratio:.3f}; measured {runs} GB; {detail}"
