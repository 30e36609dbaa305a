"""Shared fixtures: a one-process world for unit tests and corpora. Helpers live in tests/helpers/."""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

import pytest
import torch

from bigtrain.entry.process import setup_process

os.environ.setdefault("OMP_NUM_THREADS", "1")  # subprocesses: 2 cores shared by several ranks
setup_process()  # what every entry point does first, before DeepSpeed and megatron-core load

from bigtrain.config import Config, validate  # noqa: E402
from bigtrain.parallel.state import init_distributed, seed_everything  # noqa: E402
from tests.distributed.parity import REPORT  # noqa: E402
from tests.e2e.test_random_kills import LOST  # noqa: E402
from tests.helpers import pool  # noqa: E402
from tests.helpers.launch import SHAKESPEARE  # noqa: E402


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One prepared-data cache for the whole session, so corpora tokenize once."""
    path = tmp_path_factory.mktemp("bigtrain-cache")
    os.environ["BIGTRAIN_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """tinyshakespeare when ../shared is present, else a text made from the stdlib (no download)."""
    if SHAKESPEARE.is_file():
        return SHAKESPEARE

    root = Path(sysconfig.get_paths()["stdlib"])
    text = "".join(p.read_text(errors="ignore") for p in sorted(root.glob("*.py"))[:60])
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(text)
    return path


@pytest.fixture(scope="session")
def world1():
    """torch.distributed and megatron-core groups for a world of one process (gloo)."""

    ranks = init_distributed(validate(Config(), world_size=1))
    seed_everything(0, ranks)
    return ranks


def pytest_addoption(parser):
    parser.addoption("--bf16-all", action="store_true", help="bf16 parity on every layout, not one per bf16 path")
    parser.addoption("--kill-seed", type=int, help="the random-kill test's seed (its failure message names it)")


def pytest_collection_modifyitems(config, items):
    """`gpu` tests run only where CUDA is present; `bf16_all` cases only with --bf16-all."""
    if not config.getoption("--bf16-all"):
        extra = [item for item in items if "bf16_all" in item.keywords]
        if extra:
            config.hook.pytest_deselected(items=extra)
            items[:] = [item for item in items if "bf16_all" not in item.keywords]
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_sessionfinish(session):
    pool.close_all()  # the warm workers (tests/helpers/pool.py) end with the session


def pytest_terminal_summary(terminalreporter):
    """The parity figures of this session, one line per layout (the README table's source)."""

    if LOST:
        terminalreporter.write_line("kill -9 at random steps, steps lost per kill (checkpoint every 4 steps):")
        for name, lost in LOST.items():
            terminalreporter.write_line(f"  {name:12s} {lost}")
    if REPORT:
        terminalreporter.write_line("layout parity, worst relative loss difference vs one process:")
        for name, figures in REPORT.items():
            terminalreporter.write_line(f"  {name:34s} " + "  ".join(f"{k} {v:.1e}" for k, v in figures.items()))
