"""Process-wide setup, in one place: every entry point calls `setup_process()` once, first.

Everything here changes the whole process (environment, threads, warnings, log levels, library
patches), so it happens before bigtrain imports DeepSpeed or megatron-core and before any process
group exists. Nothing else in bigtrain writes `os.environ` or patches a library.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import gc
import logging
import os
import sys
import traceback
import warnings

_done = False
# The libraries whose INFO lines flood a console: quiet unless logging.verbose=true.
LIBRARY_LOGGERS = ("megatron", "megatron_fsdp", "compilers", "DeepSpeed", "torch.distributed")


def setup_process(local_rank: str | None = None, verbose: bool = False) -> None:
    """Idempotent: a second call (tests, notebooks) does nothing. `local_rank`: the launcher's
    `--local_rank` argument, if it passed one; `verbose`: logging.verbose, when the command line
    already says so (run() applies the resolved config's value again)."""
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
    set_verbosity(verbose)
    rank = int(os.environ.get("RANK", "0"))
    if rank != 0:
        sys.excepthook = _prefixed_excepthook(rank)
    if not cuda:
        _share_cores()
        # DeepSpeed compiles a shared-memory collective with g++ (~60 s) on first use; gloo is
        # enough for CPU runs.
        import deepspeed.ops  # noqa: PLC0415  (after DS_ACCELERATOR is set, see above)

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    with _compile_on_first_call(torch):
        import megatron.core  # noqa: F401, PLC0415  (after DS_ACCELERATOR is set, see above)

        with contextlib.suppress(ImportError):  # what DeepSpeed imports when it checks a ZeRO optimizer
            import deepspeed.runtime.zero.muon.muon_optimizer  # noqa: F401, PLC0415
    if not cuda:
        # megatron-core's tensor-parallel helpers call CUDA unconditionally in a few places.
        from bigtrain.parallel import cpu_compat  # noqa: PLC0415  (imports megatron-core)

        cpu_compat.apply()
    # torch, DeepSpeed and megatron-core leave ~440,000 objects that live as long as the process,
    # and every full collection walks them all (0.27 s on a 2-core CPU); so do the interpreter's
    # collections at exit (1.2-1.5 s of every rank's end). Frozen objects are skipped: freeze what
    # the imports made, and everything at exit. What a run makes later is collected as before,
    # so a process that runs one job after another frees each job's objects.
    gc.freeze()
    atexit.register(gc.freeze)
    _done = True


@contextlib.contextmanager
def _compile_on_first_call(torch):
    """While megatron-core and DeepSpeed's Muon optimizer import, `torch.compile(fn)` returns a
    stand-in that compiles `fn` the first time it is called. Both decorate kernels with
    torch.compile at import (megatron.core.jit; DeepSpeed imports Muon whenever it checks a ZeRO
    optimizer), and the decorator alone imports dynamo and inductor: 1.1-1.5 s of every rank's
    start on a 2-core CPU, for kernels bigtrain never calls. torch.compile compiles on the first
    call too, so a kernel that is called behaves as before."""
    compile_now = torch.compile

    def compile_later(model=None, **options):
        if model is None:  # used as @torch.compile(**options)
            return lambda fn: compile_later(fn, **options)
        compiled = None

        @functools.wraps(model)
        def first_call_compiles(*args, **kwargs):
            nonlocal compiled
            if compiled is None:
                compiled = compile_now(model, **options)
            return compiled(*args, **kwargs)

        return first_call_compiles

    torch.compile = compile_later
    try:
        yield
    finally:
        torch.compile = compile_now


def set_verbosity(verbose: bool) -> None:
    """Only rank 0 talks. Quiet (the default): the libraries' INFO lines (megatron-core's dataset
    builder, DeepSpeed's engine and op probes, megatron-FSDP) are dropped on rank 0, and other
    ranks show only errors. Verbose: every rank shows the libraries' INFO lines and warnings."""
    rank = int(os.environ.get("RANK", "0"))
    level = logging.INFO if verbose else (logging.WARNING if rank == 0 else logging.ERROR)
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(level)
    if not verbose and rank != 0:
        warnings.filterwarnings("ignore")


def wants_verbose(argv: list[str]) -> bool:
    """logging.verbose=true among the command line's overrides (read before Hydra runs, so that
    the libraries' import-time lines follow it too)."""
    return any(arg.lower() in ("logging.verbose=true", "logging.verbose=1", "logging.verbose=yes") for arg in argv)


def rank_prefix(rank: int) -> str:
    """What a non-zero rank puts before its error lines; rank 0's lines carry none."""
    return f"[rank {rank}] " if rank else ""


def with_rank(rank: int, text: str) -> str:
    """`text` (a traceback, say) with the rank's prefix on every line."""
    return "\n".join(rank_prefix(rank) + line for line in text.splitlines())


def _prefixed_excepthook(rank: int):
    """An uncaught exception on a non-zero rank: its traceback with the rank on every line."""

    def hook(kind, value, tb) -> None:
        print(with_rank(rank, "".join(traceback.format_exception(kind, value, tb))), file=sys.stderr, flush=True)

    return hook


def set_threads(threads: int | None, pin_cores: bool) -> str:
    """trainer.threads and trainer.pin_cores for this rank; returns what it set, for the log.
    Pinning gives local rank i the i-th equal share of the cores this process may use."""
    import torch  # noqa: PLC0415  (see setup_process)

    local_rank, local = int(os.environ.get("LOCAL_RANK", "0")), _local_ranks()
    pinned = ""
    if pin_cores and hasattr(os, "sched_setaffinity"):
        cores = sorted(os.sched_getaffinity(0))
        share = max(1, len(cores) // local)
        mine = cores[(local_rank * share) % len(cores) :][:share]
        os.sched_setaffinity(0, mine)
        pinned = f", pinned to cores {mine[0]}-{mine[-1]}"
        threads = threads or len(mine)
    if threads:
        torch.set_num_threads(threads)
    return f"{torch.get_num_threads()} threads per rank{pinned}"


@contextlib.contextmanager
def threads_kept():
    """While inside, set_threads may change torch's thread count and this process's cores; both
    are as before afterwards (a process that runs one job after another: tests, notebooks)."""
    import torch  # noqa: PLC0415  (see setup_process)

    threads = torch.get_num_threads()
    cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        if cores is not None:
            os.sched_setaffinity(0, cores)


def _share_cores() -> None:
    """The deepspeed launcher sets no OMP_NUM_THREADS: share the cores among this node's ranks."""
    import torch  # noqa: PLC0415  (see setup_process)

    if "OMP_NUM_THREADS" in os.environ:
        return
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _local_ranks()))


def _local_ranks() -> int:
    """How many ranks the launcher started on this node (at least 1)."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1"))))
