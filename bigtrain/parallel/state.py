"""Process groups and seeds: the only module that touches megatron-core's `parallel_state` globals.

Rank order is tensor-parallel fastest, then data, then pipeline: megatron-core's default order
('tp-cp-ep-dp-pp') and DeepSpeed's `PipeModelDataParallelTopology` (axes pipe, data, model) give
the same map, which `tests/unit/test_topology.py` checks.
"""

from __future__ import annotations

import os
import random
import socket
from dataclasses import dataclass
from datetime import timedelta

import deepspeed
import numpy as np
import torch
from megatron.core import parallel_state, tensor_parallel

from bigtrain.config.schema import ParallelConfig
from bigtrain.config.validate import Layout
from bigtrain.model.layers import TensorParallel
from bigtrain.parallel import health


@dataclass(frozen=True)
class Ranks:
    """Where this process sits in the layout."""

    rank: int
    local_rank: int
    tp: int
    pp: int
    dp: int
    layout: Layout

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_first_stage(self) -> bool:
        return self.pp == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp == self.layout.pipeline - 1

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if torch.cuda.is_available() else torch.device("cpu")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(layout: Layout, timeout_s: int = 600) -> Ranks:
    """Start torch.distributed (NCCL on GPUs, gloo on CPU), then megatron-core's groups.

    Under a launcher (deepspeed, torchrun, srun) the environment says where this rank is; a plain
    `python` run is a world of one on a free local port, and the environment is left as it is.
    `timeout_s` (parallel.collective_timeout_s): how long a collective waits for a rank that stopped
    answering before it fails, in every group (megatron-core's too).
    """
    cuda = torch.cuda.is_available()
    backend = "nccl" if cuda else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
    if not torch.distributed.is_initialized():
        if "RANK" not in os.environ:
            torch.distributed.init_process_group(
                backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1
            )
        # adopts an existing group
        deepspeed.init_distributed(dist_backend=backend, verbose=False, timeout=timedelta(seconds=timeout_s))
    world = torch.distributed.get_world_size()
    if world != layout.world_size:
        raise RuntimeError(
            f"launcher started {world} ranks but the config was validated for "
            f"{layout.world_size}: set WORLD_SIZE consistently"
        )
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(
            # timedelta(minutes=) takes fractions: seconds as set, not rounded to minutes
            layout.tensor,
            layout.pipeline,
            distributed_timeout_minutes=timeout_s / 60,
        )
    if world > 1:
        health.register(torch.distributed.get_rank())
    return Ranks(
        rank=torch.distributed.get_rank(),
        local_rank=local_rank,
        tp=parallel_state.get_tensor_model_parallel_rank(),
        pp=parallel_state.get_pipeline_model_parallel_rank(),
        dp=parallel_state.get_data_parallel_rank(),
        layout=layout,
    )


def tensor_parallel_plan(parallel: ParallelConfig, ranks: Ranks) -> TensorParallel:
    """This rank's tensor-parallel place, with megatron-core's group, for building the model."""
    return TensorParallel(
        size=parallel.tensor_parallel,
        rank=ranks.tp,
        sequence_parallel=parallel.sequence_parallel,
        group=tensor_parallel_group(),  # also at size 1, so megatron never falls back to its globals
    )


def seed_everything(seed: int, ranks: Ranks) -> None:
    """Python, numpy and torch share `seed` on every rank; megatron's tracker differs per TP rank.

    The default generator is the same on all tensor-parallel ranks so dropout on replicated
    activations agrees; dropout on sharded activations forks the tracker's per-rank stream.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    tracker = tensor_parallel.get_cuda_rng_tracker()
    tracker.reset()
    tracker.add("model-parallel-rng", seed + 2718 + ranks.tp)
    if torch.cuda.is_available():
        torch.cuda.manual_seed(seed)


def destroy() -> None:
    """Undo init_distributed, so that the process can start another run (a later layout included)."""
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if torch.distributed.is_initialized():
        if deepspeed.comm.is_initialized():
            # DeepSpeed's own: also drops the groups it cached (its world group, the mpu)
            deepspeed.comm.destroy_process_group()
        else:
            torch.distributed.destroy_process_group()


def data_parallel_group():
    return parallel_state.get_data_parallel_group()


def model_parallel_group():
    """Tensor × pipeline ranks holding one replica of the model."""
    return parallel_state.get_model_parallel_group()


def tensor_parallel_group():
    return parallel_state.get_tensor_model_parallel_group()


def tensor_parallel_rank_and_size() -> tuple[int, int]:
    return (parallel_state.get_tensor_model_parallel_rank(), parallel_state.get_tensor_model_parallel_world_size())


def pipeline_parallel_group():
    return parallel_state.get_pipeline_model_parallel_group()


def pipeline_peers() -> tuple[int, int, int]:
    """Global ranks of the previous, the next and the last stage of this rank's pipeline."""
    return (
        parallel_state.get_pipeline_model_parallel_prev_rank(),
        parallel_state.get_pipeline_model_parallel_next_rank(),
        parallel_state.get_pipeline_model_parallel_last_rank(),
    )


class DeepSpeedMPU:
    """The `mpu` interface DeepSpeed asks for, answered by megatron-core's groups.

    "Model parallel" here means tensor parallel: DeepSpeed uses it to avoid counting replicated
    parameters twice in the gradient norm, and the data-parallel group to reduce gradients.
    """

    def __getattr__(self, name: str):
        aliases = {
            "get_model_parallel_rank": parallel_state.get_tensor_model_parallel_rank,
            "get_model_parallel_world_size": parallel_state.get_tensor_model_parallel_world_size,
            "get_model_parallel_group": parallel_state.get_tensor_model_parallel_group,
            "get_slice_parallel_rank": parallel_state.get_tensor_model_parallel_rank,
            "get_slice_parallel_world_size": parallel_state.get_tensor_model_parallel_world_size,
            "get_slice_parallel_group": parallel_state.get_tensor_model_parallel_group,
        }
        if name in aliases:
            return aliases[name]
        if name.startswith(("get_data_parallel", "get_tensor_model_parallel", "get_pipeline_model_parallel")):
            return getattr(parallel_state, name)
        raise AttributeError(name)
