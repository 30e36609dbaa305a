"""One rank of the warm pool (tests/helpers/pool.py): imports bigtrain once, then runs jobs.

Started as `python -m tests.helpers.pool_worker` from the repository root with RANK, WORLD_SIZE,
LOCAL_RANK, LOCAL_SIZE and MASTER_ADDR set, as the deepspeed launcher sets them. Each job is one
JSON line on stdin: the command line's overrides, the environment, the port and where to write
this rank's output. The worker runs bigtrain's own entry point (`bigtrain.entry.cli.pretrain`, what
launch/pretrain.py calls, Hydra included) with that argv and environment, its stdout and stderr
going to the job's files, and answers one JSON line on its original stdout: the exit status, and
what the job left behind in the process (which a re-entrant run leaves nothing of).
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import threading
import traceback

from bigtrain.entry.process import setup_process

RANK_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR")
SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


def main() -> None:
    reply = os.fdopen(os.dup(1), "w", buffering=1)  # the pool's channel; fd 1 becomes each job's file
    ranks = {key: os.environ[key] for key in RANK_VARIABLES if key in os.environ}
    setup_process(ranks["LOCAL_RANK"])
    import torch  # noqa: PLC0415  (after setup_process, as every entry point)
    from deepspeed.accelerator import get_accelerator  # noqa: PLC0415
    from hydra.core.global_hydra import GlobalHydra  # noqa: PLC0415

    from bigtrain.entry import cli  # noqa: PLC0415
    from bigtrain.entry import run as _run  # noqa: F401, PLC0415  (imported once here, not in the first job)

    accelerator = get_accelerator()
    fp16_supported = accelerator.is_fp16_supported
    reply.write(json.dumps({"ready": os.getpid()}) + "\n")
    for line in sys.stdin:
        job = json.loads(line)
        before = _process_state(torch)
        environ = dict(os.environ)
        os.environ.clear()
        os.environ.update({**job["env"], **ranks, "MASTER_PORT": str(job["port"])})
        sys.argv = ["launch/pretrain.py", *job["args"], f"--local_rank={ranks['LOCAL_RANK']}"]
        if job.get("fp16_on_cpu"):  # tests/helpers/fp16_on_cpu.py's one capability flag
            accelerator.is_fp16_supported = lambda: True
        GlobalHydra.instance().clear()  # the last job's hydra.main left it initialized
        code = _redirected(job["out"], cli.pretrain)
        accelerator.is_fp16_supported = fp16_supported
        os.environ.clear()
        os.environ.update(environ)
        gc.collect()
        after = _process_state(torch)
        left = {key: [before[key], after[key]] for key in before if before[key] != after[key]}
        reply.write(json.dumps({"returncode": code, "left": left}) + "\n")


def _redirected(out: str, entry) -> int:
    """Run `entry` with fds 1 and 2 on `out`.stdout / `out`.stderr; its exit status."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(f"{out}.stdout", "w") as stdout, open(f"{out}.stderr", "w") as stderr:
        os.dup2(stdout.fileno(), 1)
        os.dup2(stderr.fileno(), 2)
        try:
            entry()
            code = 0
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        except BaseException:  # noqa: BLE001  (a crash is this job's result, not the worker's end)
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
    return code


def _process_state(torch) -> dict:
    """What a run could leave behind in its process: process groups, signal handlers, threads,
    patched collectives, torch's thread count, the CPU affinity, and live DeepSpeed engines (one
    kept alive keeps its model, optimizer state and gloo groups, whose threads poll)."""
    from deepspeed import DeepSpeedEngine  # noqa: PLC0415  (imported by main() already)

    return {
        "engines": sum(isinstance(o, DeepSpeedEngine) for o in gc.get_objects()),
        "process_group": torch.distributed.is_initialized(),
        "signal_handlers": [repr(signal.getsignal(s)) for s in SIGNALS],
        "threads": sorted(t.name for t in threading.enumerate() if not t.daemon or t.name.startswith("bigtrain")),
        "timed_collectives": getattr(torch.distributed.all_reduce, "_bigtrain_timed", False),
        "torch_threads": torch.get_num_threads(),
        "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }


if __name__ == "__main__":
    main()
