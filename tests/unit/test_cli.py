"""Entry-point plumbing: the deepspeed launcher's --local_rank, one process setup, who talks."""

import logging
import os
import warnings

import pytest

from bigtrain.entry.cli import split_local_rank
from bigtrain.entry.process import (
    LIBRARY_LOGGERS,
    _prefixed_excepthook,
    set_verbosity,
    setup_process,
    wants_verbose,
    with_rank,
)


@pytest.mark.parametrize(
    "argv,rest,rank",
    [
        (["p", "model=tiny", "--local_rank=3", "parallel=zero1"], ["p", "model=tiny", "parallel=zero1"], "3"),
        (["p", "--local_rank", "5", "x=1"], ["p", "x=1"], "5"),
        (["p", "x=1"], ["p", "x=1"], None),
    ],
)
def test_local_rank_argument_is_split_off(argv, rest, rank):
    assert split_local_rank(argv) == (rest, rank)


def test_setup_process_ran_once_and_set_what_deepspeed_reads():
    """conftest.py called it, as every entry point does; a second call changes nothing."""
    before = dict(os.environ)
    setup_process("7")
    assert dict(os.environ) == before
    assert os.environ["DS_ACCELERATOR"] in ("cpu", "cuda") and "LOCAL_RANK" in os.environ


@pytest.mark.parametrize(
    "rank,verbose,level",
    [("0", False, logging.WARNING), ("1", False, logging.ERROR), ("0", True, logging.INFO), ("3", True, logging.INFO)],
)
def test_only_rank_zero_talks_unless_verbose(monkeypatch, rank, verbose, level):
    before = {name: logging.getLogger(name).level for name in LIBRARY_LOGGERS}
    monkeypatch.setenv("RANK", rank)
    try:
        with warnings.catch_warnings(record=True) as shown:
            warnings.simplefilter("always")
            set_verbosity(verbose)
            assert {logging.getLogger(name).level for name in LIBRARY_LOGGERS} == {level}
            warnings.warn("a library's warning", UserWarning, stacklevel=1)
            assert len(shown) == (0 if rank != "0" and not verbose else 1)
    finally:
        for name, old in before.items():
            logging.getLogger(name).setLevel(old)


def test_verbose_is_read_from_the_command_line_before_hydra():
    assert wants_verbose(["p", "model=tiny", "logging.verbose=true"])
    assert wants_verbose(["p", "logging.verbose=True"])
    assert not wants_verbose(["p", "logging.verbose=false", "model=tiny"])


def test_a_non_zero_rank_prefixes_every_line_of_its_traceback(capsys):
    try:
        raise ValueError("disk full")
    except ValueError as err:
        _prefixed_excepthook(2)(type(err), err, err.__traceback__)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) >= 3 and all(line.startswith("[rank 2] ") for line in lines)
    assert lines[0] == "[rank 2] Traceback (most recent call last):" and lines[-1] == "[rank 2] ValueError: disk full"
    assert with_rank(0, "a\nb") == "a\nb"
