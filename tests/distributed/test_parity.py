"""Every layout trains like one process: per-step loss within 1e-4 relative over 20 steps (fp32).

Each layout runs through the real `deepspeed` launcher as multi-process gloo on CPU.
"""
import pytest

from tests.distributed.parity import GPT, LLAMA, run_layout, worst_relative_difference

pytestmark = [pytest.mark.distributed, pytest.mark.e2e]

TOLERANCE = 1e-4
# name: (family, ranks, overrides)
LAYOUTS = {
    "zero1_dp2": (GPT, 2, ["parallel=zero1", "trainer.micro_batch_size=2"]),
    "zero2_dp2": (GPT, 2, ["parallel=zero2", "trainer.micro_batch_size=2"]),
    "zero3_dp2": (GPT, 2, ["parallel=zero3", "trainer.micro_batch_size=2"]),
    "tp2": (LLAMA, 2, ["parallel=tp2", "trainer.micro_batch_size=4"]),
    "tp2_sp": (GPT, 2, ["parallel=tp2_sp", "trainer.micro_batch_size=4"]),
    "pp2": (GPT, 2, ["parallel=pp2", "trainer.micro_batch_size=2"]),
    "tp2_pp2": (LLAMA, 4, ["parallel=tp2_pp2", "trainer.micro_batch_size=2"]),
    "tp2_dp2_zero1": (GPT, 4, ["parallel=tp2", "parallel.zero_stage=1", "trainer.micro_batch_size=2"]),
    # Activation checkpointing recomputes the same forward, so it keeps parity too.
    "tp2_sp_checkpointed": (LLAMA, 2, ["parallel=tp2_sp", "trainer.micro_batch_size=4",
                                       "trainer.activation_checkpointing=full"]),
    "pp2_checkpointed": (GPT, 2, ["parallel=pp2", "trainer.micro_batch_size=2",
                                  "trainer.activation_checkpointing=full"]),
}
_runs: dict = {}
_report: dict = {}


def reference(family, corpus, tmp_path_factory):
    key = "gpt" if family is GPT else "llama"
    if key not in _runs:
        _runs[key] = run_layout(corpus, tmp_path_factory.mktemp(f"single-{key}"), 1,
                                [*family, "parallel=single", "trainer.micro_batch_size=4"])
    return _runs[key]


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_layout_matches_single_process(name, corpus, cache_dir, tmp_path_factory):
    family, ranks, overrides = LAYOUTS[name]
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
