"""logging.comm_time's clock: over two gloo processes, the time rank 0 spends waiting inside a
collective for a late rank 1 is counted, through torch.distributed, DeepSpeed's comm layer,
megatron-core's import-time alias and an asynchronous handle's wait(); compute outside
collectives is not. Then one real run with the flag logs a share on every step."""

import os
import time

import pytest
import torch

from tests.helpers import pool
from tests.helpers.launch import read_metrics
from tests.helpers.spawn import spawn_two

pytestmark = pytest.mark.distributed

LATE = 0.3  # seconds rank 1 computes before each collective


def _worker(rank: int, port: int, queue) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from bigtrain.entry.process import setup_process  # noqa: PLC0415

    setup_process()  # a fresh spawned interpreter: without it, DeepSpeed's comm compiles its shared-memory op
    import deepspeed.comm as ds_comm  # noqa: PLC0415
    import torch.distributed as dist  # noqa: PLC0415
    from megatron.core.tensor_parallel import mappings  # noqa: PLC0415

    from bigtrain.metrics.comm import CommClock, measurable  # noqa: PLC0415

    dist.init_process_group("gloo", rank=rank, world_size=2)
    ds_comm.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
    clock = CommClock()
    clock.install()
    readings = {"measurable": measurable()}
    x = torch.ones(1000)

    def late(fn) -> float:
        dist.barrier()  # both ranks start together (barrier is not a timed collective)
        clock.take()
        if rank == 1:
            time.sleep(LATE)
        fn()
        return clock.take()

    readings["torch"] = late(lambda: dist.all_reduce(x))
    readings["deepspeed"] = late(lambda: ds_comm.all_reduce(x))
    out = torch.empty(2000)
    readings["deepspeed_backend"] = late(lambda: ds_comm.all_gather_into_tensor(out, x))  # ZeRO-3's gather
    readings["megatron_alias"] = late(lambda: mappings.dist_all_gather_func(out, x))
    readings["async_wait"] = late(lambda: dist.all_reduce(x, async_op=True).wait())
    clock.take()
    time.sleep(0.2)  # compute, no collective
    readings["compute"] = clock.take()
    queue.put((rank, readings))
    dist.destroy_process_group()


def test_comm_clock_counts_waiting_inside_collectives_only():
    results = spawn_two(_worker)
    first = results[0]
    assert first.pop("measurable") is None  # gloo: measurable
    assert first.pop("compute") == 0.0
    for path, seconds in first.items():
        assert LATE * 0.8 < seconds < LATE + 1.0, (path, seconds)  # rank 0 waited for rank 1
    assert len(first) == 5
    for path in ("torch", "deepspeed", "deepspeed_backend", "megatron_alias", "async_wait"):
        assert results[1][path] < LATE * 0.5, (path, results[1][path])  # rank 1 found rank 0 waiting


def test_comm_time_is_logged_per_step(corpus, cache_dir, tmp_path):
    args = ["model=tiny", "model.n_layers=2", "data=shakespeare_char", "parallel=tp2", "trainer.max_steps=4"]
    args += ["trainer.log_interval=1", "trainer.eval_interval=100", "trainer.eval_iters=1", "trainer.sample_tokens=0"]
    args += ["trainer.save_at_end=false", "logging.progress_bar=false", "logging.tensorboard=false"]
    args += [f"data.path={corpus}", f"hydra.run.dir={tmp_path / 'run'}", "logging.comm_time=true"]
    proc = pool.run(2, args)  # the pool fails the test if the clock stays installed after the run
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows:  # tensor parallelism all-reduces every layer's activations: never zero
        assert 0 < r["comm_time"] < r["step_time"] and r["comm_share"] == pytest.approx(r["comm_time"] / r["step_time"])
