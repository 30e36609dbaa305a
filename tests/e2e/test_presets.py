"""Every `conf/parallel/` preset runs to completion (on the warm workers, tests/helpers/pool.py) with its
own defaults (ZeRO stage, micro-batch, evaluation, clipping, checkpoint, the 200-token sample) on
a tiny model: exit 0, finite losses, the layout it promises, and a sample in summary.json."""

import json
import math
import re
from pathlib import Path

import pytest

from bigtrain.config.hydra import CONF_DIR
from tests.helpers import pool
from tests.helpers.launch import read_metrics

pytestmark = [pytest.mark.distributed, pytest.mark.pool]

# preset -> (ranks to launch, tensor, pipeline, data parallel) it should produce
RANKS = {
    "single": (1, 1, 1, 1),
    "zero1": (2, 1, 1, 2),
    "zero2": (2, 1, 1, 2),
    "zero3": (2, 1, 1, 2),
    "tp2": (2, 2, 1, 1),
    "tp2_sp": (2, 2, 1, 1),
    "pp2": (2, 1, 2, 1),
    "tp2_pp2": (4, 2, 2, 1),
    "3d": (8, 2, 2, 2),
}
TINY = [
    "model=tiny",
    "model.n_layers=4",
    "model.d_model=64",
    "model.n_heads=4",
    "model.seq_len=32",
    "data=shakespeare_char",
    "trainer.max_steps=3",
    "logging.progress_bar=false",
]


def test_every_parallel_preset_is_covered():
    assert sorted(p.stem for p in (Path(CONF_DIR) / "parallel").glob("*.yaml")) == sorted(RANKS)


@pytest.mark.parametrize(
    "preset", [pytest.param(p, marks=[pytest.mark.four_ranks] if RANKS[p][0] >= 4 else []) for p in RANKS]
)
def test_preset_runs_with_its_own_defaults(preset, corpus, cache_dir, tmp_path):
    ranks, tensor, pipeline, data = RANKS[preset]
    args = [f"parallel={preset}", f"data.path={corpus}", f"hydra.run.dir={tmp_path}", *TINY]
    proc = pool.run(ranks, args, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert re.search(rf"layout: world {ranks} = tensor {tensor} × pipeline {pipeline} × data {data};", proc.stdout)
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in rows)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert math.isfinite(summary["val_loss"]) and len(summary["sample"]) > 50
    assert (tmp_path / "checkpoints" / "step_00000003" / "bigtrain" / "meta.json").is_file()
