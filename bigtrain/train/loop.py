"""The training loop: forward → loss → backward → step, evaluation and checkpoints on cadence."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from bigtrain.config.schema import OptimConfig, TrainerConfig
from bigtrain.data.dataset import Batch, Batches
from bigtrain.metrics.sinks import Sinks
from bigtrain.metrics.throughput import Meter
from bigtrain.model.optim import lr_at
from bigtrain.parallel.engine import Engine, loss_scale
from bigtrain.parallel.state import Ranks, data_parallel_group
from bigtrain.train.callbacks import Callbacks
from bigtrain.train.checkpoint import Checkpointer
from bigtrain.train.spikes import SpikeDetector


class NonFiniteError(RuntimeError):
    """Training stopped on non-finite numbers (trainer.on_nonfinite); the message names the step."""


@dataclass
class TrainState:
    step: int = 0  # optimizer steps completed
    consumed_samples: int = 0


@dataclass
class Components:
    """What the loop works with, built in one place (bigtrain/entry/assemble.py)."""

    engine: Engine
    train: Batches  # this rank's training micro-batches (prefetched)
    val: Batches
    meter: Meter
    sinks: Sinks | None  # rank 0's
    checkpointer: Checkpointer
    callbacks: Callbacks


class Trainer:
    def __init__(
        self, trainer: TrainerConfig, optim: OptimConfig, ranks: Ranks, parts: Components, state: TrainState, log=print
    ):
        self.t, self.optim, self.ranks, self.parts, self.state, self.log = trainer, optim, ranks, parts, state, log
        self.engine = parts.engine.engine
        self.checkpointer, self.meter, self.callbacks = parts.checkpointer, parts.meter, parts.callbacks
        self.pipelined = ranks.layout.pipeline > 1
        self.last_val: float | None = None
        self.interrupted = False
        self.spikes = SpikeDetector(trainer.spike_window, trainer.spike_zscore)
        self.skipped_in_a_row = self.skipped_total = 0

    def fit(self) -> None:
        t = self.t
        while self.state.step < t.max_steps:
            step = self.state.step
            lr = lr_at(step, self.optim, t.max_steps)
            start = time.perf_counter()
            self.callbacks.step_start(step + 1)
            loss = self.train_step(step)
            seconds = time.perf_counter() - start
            metrics = {"step_seconds": seconds}
            self.callbacks.step_end(step + 1, metrics)
            del metrics["step_seconds"]  # logged as the meter's step_time
            self.state.step += 1
            self.state.consumed_samples += t.global_batch_size
            done = self.state.step
            norm = self.grad_norm()
            events = self.check_numbers(done, loss, norm)
            log_now = done % t.log_interval == 0 or done == t.max_steps or bool(events)
            eval_now = done % t.eval_interval == 0 or done == t.max_steps
            if log_now or eval_now:
                record = {
                    "step": done,
                    "loss": loss,
                    "lr": lr,
                    "grad_norm": norm,
                    "consumed_samples": self.state.consumed_samples,
                    **events,
                    **self.meter.measure(seconds),
                    **metrics,
                }
                if self.engine.fp16_enabled():
                    record["loss_scale"] = loss_scale(self.engine.optimizer)
                if eval_now:
                    self.last_val = self.evaluate()
                    record.update(val_loss=self.last_val, val_ppl=math.exp(min(self.last_val, 50.0)))
                if self.parts.sinks:
                    self.parts.sinks.log(record)
            stop = self.checkpointer.should_stop()
            if self.checkpointer.due(done) or stop:
                self.checkpointer.save(self.engine, self.state)
            if stop:
                self.interrupted = True
                return

    def check_numbers(self, done: int, loss: float, norm: float | None) -> dict:
        """Non-finite loss or gradient norm (the update was skipped by the guard) and loss spikes:
        the events to log with this step. Every rank sees the same loss and norm, so every rank
        decides alike. Raises NonFiniteError when trainer.on_nonfinite says stop."""
        overflow = norm is not None and not math.isfinite(norm)
        min_scale = self.parts.engine.min_loss_scale
        if min_scale is not None and getattr(self.engine.optimizer, "overflow", False):
            # fp16: DeepSpeed's loss scaler skipped this overflowing step and lowered the scale
            scale = loss_scale(self.engine.optimizer)
            if scale <= min_scale:
                raise NonFiniteError(
                    f"step {done}: the fp16 loss scale collapsed to its minimum ({scale:g}, precision.min_loss_scale) "
                    "and gradients still overflow: train in bf16, lower optim.lr, or resume from the last checkpoint"
                )
            return {"event": "fp16_overflow_skipped", "loss_scale": scale}
        bad = not math.isfinite(loss) or overflow
        if not bad:
            self.skipped_in_a_row = 0
            score = self.spikes.zscore(loss)
            if self.spikes.is_spike(score):
                self.log(
                    f"step {done}: loss spike, {loss:.4f} is {score:.1f} robust deviations above the recent median"
                )
                return {"event": "loss_spike", "loss_spike": 1, "loss_zscore": score}
            return {}
        # skipped by bigtrain's guard, or by DeepSpeed's ZeRO optimizer, which skips a step whose
        # gradient norm is not finite by itself (and never calls the guard then)
        skipped = self.parts.engine.guard.skipped or getattr(self.engine.optimizer, "overflow", False)
        self.skipped_in_a_row += 1
        self.skipped_total += 1
        what = (
            f"non-finite {'loss' if not math.isfinite(loss) else 'gradient norm'} in step {done} (loss {loss}, "
            f"gradient norm {norm})"
        )
        policy = self.t.on_nonfinite
        if policy == "stop" or not skipped or self.skipped_in_a_row >= self.t.max_skipped_steps:
            why = (
                "trainer.on_nonfinite=stop"
                if policy == "stop"
                else f"{self.skipped_in_a_row} steps in a row skipped (trainer.max_skipped_steps)"
                if skipped
                else "the update could not be skipped"
            )
            diagnostic = self.checkpointer.save(self.engine, self.state, diagnostic=True)
            raise NonFiniteError(
                f"{what}: stopped ({why}); the weights it stopped with are saved in {diagnostic} (resume never "
                "reads them). Lower optim.lr, check that step's data, or resume from the last checkpoint"
            )
        self.log(f"{what}: the update was skipped ({self.skipped_in_a_row} in a row, {self.skipped_total} in all)")
        return {"event": "nonfinite_skipped", "nonfinite": 1, "skipped_steps": self.skipped_total}

    def train_step(self, step: int) -> float:
        """One optimizer step over the global batch; returns the mean loss over it."""
        hooks, n = self.callbacks, step + 1
        if self.pipelined:  # forward and backward of every micro-batch in one call
            batches = iter(self.parts.train.step_batches(step))
            hooks.before_backward(n)
            loss = float(self.engine.train_batch(data_iter=_pipe_inputs(batches)))
            hooks.after_backward(n)
            return loss
        losses = []
        for batch in self.parts.train.step_batches(step):
            loss = self.forward_loss(batch)
            hooks.before_backward(n)
            self.engine.backward(loss)
            hooks.after_backward(n)
            self.engine.step()
            losses.append(loss.detach())
        return self.data_parallel_mean(torch.stack(losses).mean())

    def forward_loss(self, batch: Batch) -> torch.Tensor:
        batch = batch.to(self.engine.device)
        return self.parts.engine.loss_fn(self.engine(batch.tokens), batch.labels, batch.loss_mask)

    @torch.no_grad()
    def evaluate(self, batches: int | None = None) -> float:
        """Mean validation loss over `eval_iters` global batches (the same ones every time), or
        over `batches` global batches (`full_split_batches()` covers the whole split once)."""
        self.engine.eval()
        losses = []
        for i in range(batches or self.t.eval_iters):
            if self.pipelined:
                micro = iter(self.parts.val.step_batches(i))
                losses.append(self.engine.eval_batch(data_iter=_pipe_inputs(micro)).float())
            else:
                losses.extend(self.forward_loss(b).float() for b in self.parts.val.step_batches(i))
        self.engine.train()
        return self.data_parallel_mean(torch.stack(losses).mean())

    def full_split_batches(self) -> int:
        """Whole global batches in one pass over the validation split (a remainder is dropped)."""
        return max(1, len(self.parts.val.dataset) // self.t.global_batch_size)

    def data_parallel_mean(self, value: torch.Tensor) -> float:
        # Nothing to average over one rank; DeepSpeed's pipeline already averaged and broadcast.
        if self.pipelined or self.ranks.layout.data == 1:
            return float(value)
        value = value.detach().float().clone()
        torch.distributed.all_reduce(value, group=data_parallel_group())
        return float(value) / self.ranks.layout.data

    def grad_norm(self) -> float | None:
        """The pre-clipping gradient norm of the last step."""
        clipper = self.parts.engine.clipper
        norm = clipper.last_norm if clipper else self.engine.get_global_grad_norm()
        return None if norm is None else float(norm)


def _pipe_inputs(batches):
    """DeepSpeed pipelines take (inputs, labels) pairs: tokens in, (labels, loss mask) out."""
    for b in batches:
        yield (b.tokens, (b.labels, b.loss_mask))
