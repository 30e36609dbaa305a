"""The single call to `deepspeed.initialize`: model layout, ZeRO, pipeline stages and precision.

Parallelism is applied in a fixed order, each step logged on rank 0:
  1. tensor parallel: the model's projections are megatron-core layers sharded over T ranks
     (decided in `bigtrain/model/layers.py`); sequence parallel shards norms and dropout along the sequence;
  2. activation checkpointing per transformer block;
  3. pipeline stages: the layer list cut into P DeepSpeed `PipelineModule` stages (when P > 1);
  4. ZeRO stage and precision: DeepSpeed's engine over the data-parallel group, configured by
     the generated DeepSpeed config.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable

import deepspeed
import torch

from bigtrain.config.deepspeed import deepspeed_config, plain_path
from bigtrain.config.schema import Config
from bigtrain.model.gpt import GPT
from bigtrain.model.layers import TensorParallel, Vocab
from bigtrain.model.optim import build_optimizer
from bigtrain.parallel.clipping import GradClipper
from bigtrain.parallel.guard import NonFiniteGuard
from bigtrain.parallel.pipeline import build_pipeline
from bigtrain.parallel.state import DeepSpeedMPU, Ranks

# (logits (T, B, V/tp), labels (B, T), loss mask (B, T)) -> mean loss
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Engine:
    """What a training step is computed with."""

    engine: object  # DeepSpeed's engine (its PipelineEngine under pipeline stages)
    loss_fn: LossFn  # the plain path's; a pipeline's last stage computes the same function
    clipper: GradClipper | None  # bigtrain's clipping on the plain path (it knows the last norm), else DeepSpeed's
    guard: NonFiniteGuard  # skips an update with NaN/Inf gradients; a step callback (its reset)
    min_loss_scale: float | None  # fp16: stop when the dynamic loss scale collapses to it

    def release(self) -> None:
        """Remove the gradient hooks DeepSpeed's ZeRO optimizers put on the parameters. They close
        over the optimizer, which holds the parameters: a cycle through autograd's C++ nodes that
        Python's collector cannot see, so without this the model, its optimizer state and its
        process groups (with their gloo threads) outlive the run in a process that runs another.
        ZeRO-3 also leaves the model at the bottom of a module-level stack of DeepSpeed's, which
        nothing pops, and its parameter coordinator in a class-wide cache; a pipeline stopped
        between steps (a signal, non-finite losses) keeps its last losses and activations, whose
        autograd graphs carry DeepSpeed's backward hooks on the engine, and its point-to-point
        groups stay in DeepSpeed's p2p module, set anew by each pipeline engine. At the run's end, also
        after a failure (a lost peer): nothing here communicates."""
        try:
            self.engine.destroy()
            _drop_graphs(self.engine)
            from deepspeed.runtime.zero import parameter_offload  # noqa: PLC0415  (ZeRO-3's, loaded with DeepSpeed)

            stack = parameter_offload.FWD_MODULE_STACK
            stack[:] = [m for m in stack if m is not self.engine.module]
            coordinator = parameter_offload.PartitionedParameterCoordinator
            wrapped = coordinator.__dict__.get("_PartitionedParameterCoordinator__params_to_release")
            for cell in getattr(wrapped, "__closure__", None) or ():  # an lru_cache inside an nvtx wrapper
                if hasattr(cell.cell_contents, "cache_clear"):
                    cell.cell_contents.cache_clear()
            from deepspeed.runtime.pipe import p2p  # noqa: PLC0415  (loaded with DeepSpeed's engine)

            p2p._groups, p2p._grid, p2p._async = None, None, []  # a pipeline's groups, set per engine
        except Exception as err:  # noqa: BLE001  (the run is over; a failed cleanup must not hide its result)
            print(f"bigtrain: warning: releasing DeepSpeed's engine failed: {err}", file=sys.stderr)


def _drop_graphs(engine) -> None:
    """Let go of the tensors with autograd graphs an engine holds between steps (a pipeline's
    losses and buffered activations)."""
    for name, value in list(vars(engine).items()):
        if isinstance(value, torch.Tensor) and value.grad_fn is not None:
            setattr(engine, name, None)
    buffers = getattr(engine, "pipe_buffers", None)
    for kept in buffers.values() if isinstance(buffers, dict) else ():
        if isinstance(kept, list):
            kept[:] = [None] * len(kept)
    if isinstance(getattr(engine, "fwd_outputs", None), list):
        engine.fwd_outputs = []


def build_engine(cfg: Config, ranks: Ranks, vocab: Vocab, tp: TensorParallel, loss_fn: LossFn, log=print) -> Engine:
    """Build the model for this rank and wrap it in a DeepSpeed engine.

    Takes the whole config on purpose: this is where model, parallel, precision, optimizer and
    trainer settings meet. `tp`: this rank's tensor-parallel plan (computed once per run);
    `loss_fn`: the run's loss, which a pipeline's last stage computes inside DeepSpeed.
    """
    layout = ranks.layout
    ckpt = cfg.trainer.activation_checkpointing == "full"
    log(
        f"layout: world {layout.world_size} = tensor {layout.tensor} × pipeline {layout.pipeline} × "
        f"data {layout.data}; grad accumulation {layout.grad_accum}"
    )
    log(f"1. tensor parallel {tp.size}" + (" with sequence parallel" if tp.sequence_parallel else ""))
    log(f"2. activation checkpointing: {cfg.trainer.activation_checkpointing}")
    if layout.pipeline > 1:
        model = build_pipeline(
            cfg.model,
            cfg.parallel.pipeline_partition,
            tp,
            ranks,
            vocab,
            seed=cfg.trainer.seed,
            checkpoint_activations=ckpt,
            loss_fn=loss_fn,
        )
        log(f"3. pipeline: {layout.pipeline} stages, partition by {cfg.parallel.pipeline_partition}")
        mpu = None  # the PipelineModule's topology supplies the groups
    else:
        model = GPT(cfg.model, tp, vocab, seed=cfg.trainer.seed, checkpoint_activations=ckpt)
        log("3. pipeline: none")
        mpu = DeepSpeedMPU()
        # In place (nn.Module.compile): parameter names and checkpoints stay the same.
        if cfg.trainer.compile and cfg.trainer.compile_scope == "model":
            model.compile()
            log("   torch.compile of the whole model, one graph (compiles on the first step)")
        elif cfg.trainer.compile:
            for block in model.blocks:
                block.compile()
            log("   torch.compile per transformer block (compiles on the first step)")
    optimizer, schedule = build_optimizer(model, cfg.optim, cfg.trainer.max_steps)
    ds_config = deepspeed_config(cfg, layout)
    stage = ds_config["zero_optimization"]["stage"]
    log(
        f"4. ZeRO stage {stage}, precision {cfg.precision.dtype}"
        + (
            f" (stage {cfg.parallel.zero_stage} raised to 1 for fp32 master weights)"
            if stage != cfg.parallel.zero_stage
            else ""
        )
    )
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=schedule, config=ds_config, mpu=mpu
    )
    min_scale = cfg.precision.min_loss_scale if cfg.precision.dtype == "fp16" else None
    if not plain_path(cfg):
        return Engine(engine, loss_fn, None, _guard(optimizer, ranks, None), min_scale)
    if layout.data == 1:
        # One data-parallel rank: DeepSpeed's gradient all-reduce would only flatten, copy and
        # unflatten every gradient (~6% of a small model's step on CPU).
        engine.enable_backward_allreduce = False
    clipper = GradClipper(cfg.optim.grad_clip)
    engine.optimizer.register_step_pre_hook(clipper)
    log(f"   gradient clipping at {cfg.optim.grad_clip} by bigtrain (whole-model norm, before each optimizer step)")
    return Engine(engine, loss_fn, clipper, _guard(optimizer, ranks, clipper), min_scale)


def _guard(optimizer, ranks: Ranks, clipper: GradClipper | None) -> NonFiniteGuard:
    """Skip an update with NaN/Inf gradients: a pre-hook of the optimizer DeepSpeed steps (the
    client optimizer, also under ZeRO and bf16 wrappers), after bigtrain's clipping, whose norm
    it reuses."""
    guard = NonFiniteGuard(ranks.device, clipper)
    optimizer.register_step_pre_hook(guard)
    return guard


def loss_scale(optimizer) -> float:
    """The current dynamic fp16 loss scale, wherever this DeepSpeed optimizer keeps it."""
    config = getattr(optimizer, "loss_scale_config", None)
    if config is not None:
        return float(config.cur_scale)
    return float(getattr(optimizer, "cur_scale", getattr(optimizer, "loss_scale", float("nan"))))
