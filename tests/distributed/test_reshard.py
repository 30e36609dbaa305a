"""Resharding: a checkpoint saved under one layout resumes under another, and the continued
losses stay within 1e-5 (relative) of the original layout's own continuation (fp32, dropout 0).

Saved at tp2 × pp2 (4 ranks), resumed at single and at zero3 dp2; saved at single, resumed at
tp2 × pp2; a mixture of experts saved at tp2 (every expert sharded), resumed at single. The
consolidated checkpoint carries weights and Adam moments, so the optimizer continues too, not
only the model.
"""

import shutil

import pytest

from tests.distributed.parity import LAYOUTS, LLAMA, MOE, run_layout_raw
from tests.helpers.launch import read_metrics

pytestmark = [pytest.mark.distributed, pytest.mark.pool]
FOUR = pytest.mark.four_ranks  # a tp2×pp2 side

STEPS = ["trainer.max_steps=12", "trainer.eval_interval=100"]
TOLERANCE = 1e-5
_originals = {}


FAMILIES = {"llama": LLAMA, "moe": MOE}


def original(name, family, corpus, tmp_path_factory):
    """The source layout run uninterrupted, and stopped after step 6 (its checkpoint)."""
    if (name, family) not in _originals:
        ranks, overrides = LAYOUTS[name]
        base = tmp_path_factory.mktemp(f"orig-{name}-{family}")
        args = [*FAMILIES[family], *overrides, *STEPS]
        whole = run_layout_raw(corpus, base / "whole", ranks, args)
        assert whole.returncode == 0, whole.stderr[-3000:]
        stopped = run_layout_raw(corpus, base / "stopped", ranks, args, env={"BIGTRAIN_FAULT": "after_step:6"})
        assert stopped.returncode == 75, stopped.stderr[-3000:]
        _originals[name, family] = (read_metrics(base / "whole" / "run"), base / "stopped" / "run")
    return _originals[name, family]


@pytest.mark.parametrize(
    "source,target,family",
    [
        pytest.param("tp2_pp2", "single", "llama", marks=FOUR),
        pytest.param("tp2_pp2", "zero3_dp2", "llama", marks=FOUR),
        pytest.param("single", "tp2_pp2", "llama", marks=FOUR),
        ("tp2", "single", "moe"),
    ],
)
def test_resume_under_another_layout(source, target, family, corpus, cache_dir, tmp_path_factory, tmp_path):
    reference, stopped_run = original(source, family, corpus, tmp_path_factory)
    shutil.copytree(stopped_run, tmp_path / "run")  # the same run directory, relaunched elsewhere
    ranks, overrides = LAYOUTS[target]
    proc = run_layout_raw(corpus, tmp_path, ranks, [*FAMILIES[family], *overrides, *STEPS])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "at step 6 (48 samples), resharded from tensor" in proc.stdout
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == list(range(1, 13))
    worst = max(abs(a["loss"] - b["loss"]) / b["loss"] for a, b in zip(rows[6:], reference[6:]))
    print(f"\n{source} -> {target}: worst relative loss difference over steps 7-12 = {worst:.2e}")
    assert worst < TOLERANCE, [(a["loss"], b["loss"]) for a, b in zip(rows[6:], reference[6:])]
    assert [r["lr"] for r in rows[6:]] == pytest.approx([r["lr"] for r in reference[6:]], rel=1e-12)
