"""Dropout under tensor parallel: replicated activations draw the same mask on every
tensor-parallel rank; sharded ones (attention heads, sequence-parallel slices) draw their own
from megatron-core's RNG tracker. Two gloo processes, spawned directly."""

import dataclasses
import os

import pytest
import torch

from tests.helpers.spawn import spawn_two

pytestmark = pytest.mark.distributed


def _worker(rank: int, port: int, queue) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
    )
    from bigtrain.entry.process import setup_process  # noqa: PLC0415

    setup_process()  # a fresh spawned interpreter: set up before DeepSpeed and megatron-core load
    from bigtrain.config import ParallelConfig  # noqa: PLC0415
    from bigtrain.config.validate import Layout  # noqa: PLC0415
    from bigtrain.model.gpt import ResidualDropout  # noqa: PLC0415
    from bigtrain.parallel.state import destroy, init_distributed, seed_everything, tensor_parallel_plan  # noqa: PLC0415

    ranks = init_distributed(Layout(world_size=2, tensor=2, pipeline=1, data=1, grad_accum=1))
    seed_everything(7, ranks)
    tp = tensor_parallel_plan(ParallelConfig(tensor_parallel=2, sequence_parallel=True), ranks)
    x = torch.ones(64, 64)
    replicated = ResidualDropout(0.5, dataclasses.replace(tp, sequence_parallel=False))(x)
    sharded = ResidualDropout(0.5, tp)(x)
    with tp.sharded_dropout():
        heads = torch.nn.functional.dropout(x, 0.5, True)
    queue.put((rank, (replicated, sharded, heads)))
    destroy()


def test_dropout_masks_across_tensor_parallel_ranks():
    results = spawn_two(_worker)
    (rep0, sp0, heads0), (rep1, sp1, heads1) = results[0], results[1]
    assert torch.equal(rep0, rep1)  # the same mask on replicated activations
    assert not torch.equal(sp0, sp1) and not torch.equal(heads0, heads1)  # their own masks on shards
    assert 0.4 < (rep0 == 0).float().mean() < 0.6
