"""Two gloo processes spawned directly, each running `worker(rank, port, queue)` and putting one
(rank, result) pair on the queue."""

import torch.multiprocessing as mp

from bigtrain.parallel.state import free_port


def spawn_two(worker) -> dict:
    """{rank: result} from both workers."""
    port = free_port()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(r, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    return results
