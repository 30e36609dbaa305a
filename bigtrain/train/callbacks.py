"""Step callbacks: what watches or perturbs the training loop lives outside it.

The loop (`bigtrain/train/loop.py`) and the checkpointer call these hooks on every rank, in this
order for optimizer step N (1-based):

    step_start(N)           before the step's first forward
    loss(N, loss) -> loss   each micro-batch's training loss, before its backward (the one hook
                            that may change a value; evaluation losses never pass through it)
    before_backward(N)      after a micro-batch's forward, before its gradients exist (a pipeline
                            runs forward and backward in one call: before that call)
    after_backward(N)       after a micro-batch's backward
    step_end(N, metrics)    the step's optimizer update is done, before its logging, evaluation
                            and checkpoint; `metrics` starts as {"step_seconds": ...} and what a
                            callback adds is logged with the step
    save_written(N)         checkpoint N's sharded files are written, the layout-free copy not yet
    before_publish(N)       checkpoint N is complete in its staging folder, not yet renamed into place
    exit(summary)           the run ends (trained to the end, or stopped by a signal: summary["interrupted"])

Users of `bigtrain.entry.run.run(cfg, run_dir, callbacks=[...])` pass their own (benchmark
timers, profilers); bigtrain's own are the non-finite guard's reset (bigtrain/parallel/guard.py),
the communication clock (bigtrain/metrics/comm.py), the MoE statistics (bigtrain/train/moe_stats.py)
and fault injection (bigtrain/train/faults.py).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class Callback:
    """A no-op for every hook; override the ones you need."""

    def step_start(self, step: int) -> None:
        pass

    def loss(self, step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss

    def before_backward(self, step: int) -> None:
        pass

    def after_backward(self, step: int) -> None:
        pass

    def step_end(self, step: int, metrics: dict) -> None:
        pass

    def save_written(self, step: int) -> None:
        pass

    def before_publish(self, step: int) -> None:
        pass

    def exit(self, summary: dict) -> None:
        pass


class Callbacks(Callback):
    """Several callbacks as one, called in order. A callback is any object with some of the hooks
    (subclassing `Callback` is optional: the guard and the comm clock, below this floor, only
    define the hooks they use). Also knows which step is being trained, so that `wrap_loss` passes
    only training losses through the `loss` hooks."""

    def __init__(self, callbacks: Iterable[object] = ()):
        self.callbacks: list[object] = []
        self.training: int | None = None  # the step between step_start and step_end
        self.extend(callbacks)

    def extend(self, callbacks: Iterable[object]) -> None:
        """Add callbacks (None entries are skipped: a feature switched off)."""
        self.callbacks.extend(c for c in callbacks if c is not None)

    def _call(self, hook: str, *args) -> None:
        for c in self.callbacks:
            fn = getattr(c, hook, None)
            if fn is not None:
                fn(*args)

    def step_start(self, step: int) -> None:
        self.training = step
        self._call("step_start", step)

    def loss(self, step: int, loss: torch.Tensor) -> torch.Tensor:
        for c in self.callbacks:
            if hasattr(c, "loss"):
                loss = c.loss(step, loss)
        return loss

    def before_backward(self, step: int) -> None:
        self._call("before_backward", step)

    def after_backward(self, step: int) -> None:
        self._call("after_backward", step)

    def step_end(self, step: int, metrics: dict) -> None:
        self.training = None
        self._call("step_end", step, metrics)

    def save_written(self, step: int) -> None:
        self._call("save_written", step)

    def before_publish(self, step: int) -> None:
        self._call("before_publish", step)

    def exit(self, summary: dict) -> None:
        self._call("exit", summary)

    def wrap_loss(self, loss_fn):
        """`loss_fn` with the `loss` hooks applied to the losses of training steps (the plain
        path's and a pipeline's last stage's loss function alike)."""

        def hooked(*args):
            loss = loss_fn(*args)
            return loss if self.training is None else self.loss(self.training, loss)

        return hooked
