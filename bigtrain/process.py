"""Process-wide setup, in one place: every entry point calls `setup_process()` once, first.

Everything here changes the whole process (environment, threads, warnings, log levels, library
patches), so it happens before bigtrain imports DeepSpeed or megatron-core and before any process
group exists. Nothing else in bigtrain writes `os.environ` or patches a library.
"""

from __future__ import annotations

import logging
import os
import warnings

_done = False


def setup_process(local_rank: str | None = None) -> None:
    """Idempotent: a second call (tests, notebooks) does nothing. `local_rank`: the launcher's
    `--local_rank` argument, if it passed one."""
    global _done
    if _done:
        return
    # torch loads here, not at the top: bigtrain-prepare's worker processes import the entry
    # point's module (and so this one) and need neither torch nor a GPU runtime.
    import torch  # noqa: PLC0415

    cuda = torch.cuda.is_available()
    # DeepSpeed picks its accelerator from this variable when it is first asked; without CUDA its
    # CPU accelerator gives gloo collectives.
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if cuda else "cpu")
    # DeepSpeed's engine and PipelineModule read LOCAL_RANK from the environment; launchers set
    # it (or pass --local_rank), a plain `python` run has none and is local rank 0.
    os.environ.setdefault("LOCAL_RANK", local_rank or "0")
    # megatron-core warns on import that Transformer Engine and Apex are absent; bigtrain uses
    # neither, so the warning says nothing to a bigtrain user.
    warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")
    # megatron-core's dataset builder and DeepSpeed's op probes log at INFO: keep warnings only.
    for name in ("megatron", "compilers", "DeepSpeed", "torch.distributed"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if not cuda:
        _share_cores()
        # DeepSpeed compiles a shared-memory collective with g++ (~60 s) on first use; gloo is
        # enough for CPU runs.
        import deepspeed.ops  # noqa: PLC0415  (after DS_ACCELERATOR is set, see above)

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        # megatron-core's tensor-parallel helpers call CUDA unconditionally in a few places.
        from bigtrain.parallel import cpu_compat  # noqa: PLC0415  (imports megatron-core)

        cpu_compat.apply()
    _done = True


def _share_cores() -> None:
    """The deepspeed launcher sets no OMP_NUM_THREADS: share the cores among this node's ranks."""
    import torch  # noqa: PLC0415  (see setup_process)

    if "OMP_NUM_THREADS" in os.environ:
        return
    local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local)))
