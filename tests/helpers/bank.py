"""The run bank: one training run per distinct resolved config, shared by every test that asks for
it during the session (parity's one-process references and the precision tests' fp32 and bf16
runs are the same runs, for example).

A run is keyed by its rank count, its resolved `Config` (the overrides composed as the run
composes them, so their order does not matter) and the environment the test adds; it trains on the
warm workers (tests/helpers/pool.py) in a directory of its own. Tests read a banked run and never
write to it: one that continues a run copies its directory first.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

from bigtrain.config.hydra import compose
from tests.helpers import pool

_RUNS: dict[str, tuple[Path, subprocess.CompletedProcess]] = {}


def trained(ranks: int, args: list[str], tmp_path_factory, env: dict | None = None, fp16_on_cpu: bool = False):
    """(run directory, the run's CompletedProcess) for `args` on `ranks` ranks, trained once;
    `env` and `fp16_on_cpu` as `pool.run` takes them."""
    resolved = dataclasses.asdict(compose(args))
    key = json.dumps([ranks, resolved, sorted((env or {}).items()), fp16_on_cpu], sort_keys=True)
    if key not in _RUNS:
        run_dir = tmp_path_factory.mktemp("bank") / "run"
        proc = pool.run(ranks, [*args, f"hydra.run.dir={run_dir}"], env=env, fp16_on_cpu=fp16_on_cpu)
        _RUNS[key] = (run_dir, proc)
    return _RUNS[key]
