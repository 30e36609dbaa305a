"""The time a rank spends inside torch.distributed's collectives, for each step's communication share.

Over gloo (CPU ranks) a collective returns only when it is done, so the wall time inside the call,
and inside `wait()` of one started with `async_op=True`, is the time the rank spent communicating,
waiting for the slowest rank included. Over NCCL a call only queues work on a stream and returns:
the time inside it says nothing, so there nothing is measured (`measurable` says why).

`CommClock.install()` wraps the functions in `OPS` on `torch.distributed` and every alias of them
that DeepSpeed or megatron-core bound at import, module attributes and DeepSpeed's communication
backend's (install it after DeepSpeed's `init_distributed`); `uninstall()` puts every one back,
so a process can run one clock after another (`with CommClock() as clock:` does both). A
collective that calls another is counted once.
"""

from __future__ import annotations

import sys
import threading
import time

import torch.distributed as dist

OPS = (
    "all_reduce",
    "all_gather",
    "all_gather_into_tensor",
    "all_gather_object",
    "_all_gather_base",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "_reduce_scatter_base",
    "all_to_all",
    "all_to_all_single",
    "broadcast",
    "broadcast_object_list",
    "reduce",
    "gather",
    "scatter",
    "send",
    "recv",
    "isend",
    "irecv",
)


def measurable() -> str | None:
    """None when this process group's collectives block until done; else why their time is not measured."""
    backend = dist.get_backend() if dist.is_initialized() else None
    if backend == "gloo":
        return None
    return (
        f"logging.comm_time: not measured over {backend or 'no process group'}: its collectives return before "
        "the transfer ends; use the torch profiler there"
    )


class _TimedWork:
    """An asynchronous collective's handle whose `wait()` is timed; everything else passes through."""

    def __init__(self, work, clock: CommClock):
        self._work, self._clock = work, clock

    def wait(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self._work.wait(*args, **kwargs)
        finally:
            self._clock.seconds += time.perf_counter() - start

    def __getattr__(self, name):
        return getattr(self._work, name)


class CommClock:
    """Seconds spent in collectives since the last `take()`, this rank's main thread."""

    def __init__(self):
        self.seconds = 0.0
        self._inside = threading.local()
        self._replaced: list[tuple[object, str, object]] = []  # (holder, attribute, original)

    def __enter__(self) -> CommClock:
        self.install()
        return self

    def __exit__(self, *exc) -> None:
        self.uninstall()

    def take(self) -> float:
        seconds, self.seconds = self.seconds, 0.0
        return seconds

    # As a step callback (bigtrain/train/callbacks.py): the step's own collectives, not the
    # evaluation's or the checkpoint's that follow it.
    def step_start(self, step: int) -> None:
        self.take()

    def step_end(self, step: int, metrics: dict) -> None:
        seconds = self.take()
        metrics.update(comm_time=seconds, comm_share=seconds / metrics["step_seconds"])

    def install(self) -> None:
        originals = {}
        for name in OPS:
            fn = getattr(dist, name, None)
            if fn is None or getattr(fn, "_bigtrain_timed", False):
                continue
            originals[fn] = self._wrap(fn)
            self._replaced.append((dist, name, fn))
            setattr(dist, name, originals[fn])
        prefixes = ("deepspeed", "megatron", "torch.distributed")
        holders = [module for name, module in list(sys.modules.items()) if name.startswith(prefixes)]
        # DeepSpeed's torch backend keeps its all-gather and reduce-scatter on the instance
        holders.append(getattr(sys.modules.get("deepspeed.comm.comm"), "cdb", None))
        for holder in holders:
            for attr, value in list(vars(holder).items()) if holder is not None else []:
                try:
                    timed = originals.get(value)
                except TypeError:  # unhashable
                    continue
                if timed is not None:
                    self._replaced.append((holder, attr, value))
                    setattr(holder, attr, timed)

    def uninstall(self) -> None:
        for holder, attr, original in reversed(self._replaced):
            setattr(holder, attr, original)
        self._replaced.clear()

    def _wrap(self, fn):
        clock = self

        def timed(*args, **kwargs):
            if getattr(clock._inside, "active", False):
                return fn(*args, **kwargs)
            clock._inside.active = True
            start = time.perf_counter()
            try:
                result = fn(*args, **kwargs)
            finally:
                clock._inside.active = False
                clock.seconds += time.perf_counter() - start
            is_work = result is not None and hasattr(result, "wait") and not isinstance(result, (list, tuple))
            return _TimedWork(result, clock) if is_work else result

        timed._bigtrain_timed = True
        timed.__wrapped__ = fn
        timed.__name__ = fn.__name__
        return timed
