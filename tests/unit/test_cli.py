"""Entry-point plumbing: the deepspeed launcher's --local_rank, and one process setup."""

import os

import pytest

from bigtrain.cli import split_local_rank
from bigtrain.process import setup_process


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
