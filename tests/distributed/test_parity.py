"""Every layout trains like one process: per-step loss within 1e-4 relative over 20 steps (fp32).

Each layout runs through the real `deepspeed` launcher as multi-process gloo on CPU.
"""
import pytest

from tests.distributed.parity import GPT, LAYOUTS, LLAMA, run_layout, worst_relative_difference

pytestmark = [pytest.mark.distributed, pytest.mark.e2e]

TOLERANCE = 1e-4
# layout (parity.LAYOUTS) -> the model family it trains
FAMILY = {"zero1_dp2": GPT, "zero2_dp2": GPT, "zero3_dp2": GPT, "tp2": LLAMA, "tp2_sp": GPT, "pp2": GPT,
          "tp2_pp2": LLAMA, "tp2_dp2_zero1": GPT, "tp2_sp_checkpointed": LLAMA, "pp2_checkpointed": GPT}
_runs: dict = {}
_report: dict = {}


def reference(family, corpus, tmp_path_factory):
    key = "gpt" if family is GPT else "llama"
    if key not in _runs:
        ranks, overrides = LAYOUTS["single"]
        _runs[key] = run_layout(corpus, tmp_path_factory.mktemp(f"single-{key}"), ranks, [*family, *overrides])
    return _runs[key]


@pytest.mark.parametrize("name", list(FAMILY))
def test_layout_matches_single_process(name, corpus, cache_dir, tmp_path_factory):
    family, (ranks, overrides) = FAMILY[name], LAYOUTS[name]
    ref = reference(family, corpus, tmp_path_factory)
    rows = run_layout(corpus, tmp_path_factory.mktemp(name), ranks, [*family, *overrides])
    worst = worst_relative_difference(rows, ref)
    _report[name] = worst
    print(f"\n{name}: worst relative loss difference over {len(rows)} steps = {worst:.2e}")
    assert worst < TOLERANCE, [(r["step"], r["loss"], q["loss"]) for r, q in zip(rows, ref)]
    assert ref[-1]["loss"] < ref[0]["loss"] - 0.5  # the reference really trains
    # The gradient norm is the same model quantity in every layout.
    assert worst_relative_difference(rows[:-1], ref[:-1], "grad_norm") < 1e-3


def test_print_parity_report(capsys):
    with capsys.disabled():
        print("\nlayout parity (worst relative loss difference vs one process, 20 steps, fp32):")
        for name, worst in _report.items():
            print(f"  {name:16s} {worst:.2e}")
