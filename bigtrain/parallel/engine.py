"""The single call to `deepspeed.initialize`: model layout, ZeRO, pipeline stages and precision.

Parallelism is applied in a fixed order, each step logged on rank 0:
  1. tensor parallel: the model's projections are megatron-core layers sharded over T ranks
     (decided in `layers.py`); sequence parallel shards norms and dropout along the sequence;
  2. activation checkpointing per transformer block;
  3. pipeline stages: the layer list cut into P DeepSpeed `PipelineModule` stages (when P > 1);
  4. ZeRO stage and precision: DeepSpeed's engine over the data-parallel group, configured by
     the generated DeepSpeed config.
"""
from __future__ import annotations

import torch
from torch import nn

from bigtrain.config.deepspeed import deepspeed_config, plain_path
from bigtrain.config.schema import Config
from bigtrain.model.gpt import GPT
from bigtrain.parallel.clipping import GradClipper
from bigtrain.parallel.layers import Norm, TensorParallel
from bigtrain.parallel.state import DeepSpeedMPU, Ranks
from bigtrain.train.schedule import lr_at


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on biases, norms and embeddings."""
    from megatron.core.tensor_parallel import VocabParallelEmbedding

    no_decay_modules = (Norm, nn.Embedding, VocabParallelEmbedding)
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            if isinstance(module, no_decay_modules) or name == "bias" or param.ndim < 2:
                no_decay.append(param)
            else:
                decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def tensor_parallel_plan(cfg: Config) -> TensorParallel:
    return TensorParallel(size=cfg.parallel.tensor_parallel, sequence_parallel=cfg.parallel.sequence_parallel,
                          pipeline_parallel=cfg.parallel.pipeline_parallel)


def build_engine(cfg: Config, ranks: Ranks, vocab: int, log=print) -> tuple[object, GradClipper | None]:
    """Build the model for this rank and wrap it in a DeepSpeed engine.

    Returns the engine and, on the plain path, bigtrain's gradient clipper (which knows the last
    step's gradient norm); elsewhere DeepSpeed's optimizer clips and reports the norm itself.
    """
    import deepspeed

    layout = ranks.layout
    tp = tensor_parallel_plan(cfg)
    ckpt = cfg.trainer.activation_checkpointing == "full"
    log(f"layout: world {layout.world_size} = tensor {layout.tensor} × pipeline {layout.pipeline} × "
        f"data {layout.data}; grad accumulation {layout.grad_accum}")
    log(f"1. tensor parallel {tp.size}" + (" with sequence parallel" if tp.sequence_parallel else ""))
    log(f"2. activation checkpointing: {cfg.trainer.activation_checkpointing}")
    if layout.pipeline > 1:
        from bigtrain.parallel.pipeline import build_pipeline
        model = build_pipeline(cfg, tp, ranks, vocab, checkpoint_activations=ckpt)
        log(f"3. pipeline: {layout.pipeline} stages, partition by {cfg.parallel.pipeline_partition}")
        mpu = None  # the PipelineModule's topology supplies the groups
    else:
        model = GPT(cfg.model, tp, vocab, seed=cfg.trainer.seed, checkpoint_activations=ckpt)
        log("3. pipeline: none")
        mpu = DeepSpeedMPU()
    o = cfg.optim
    optimizer = torch.optim.AdamW(param_groups(model, o.weight_decay), lr=o.lr, betas=(o.beta1, o.beta2),
                                  eps=o.eps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_at(step, o, cfg.trainer.max_steps) / o.lr)
    ds_config = deepspeed_config(cfg, layout)
    stage = ds_config["zero_optimization"]["stage"]
    log(f"4. ZeRO stage {stage}, precision {cfg.precision.dtype}" +
        (f" (stage {cfg.parallel.zero_stage} raised to 1 for fp32 master weights)" if stage != cfg.parallel.zero_stage else ""))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=schedule,
                                           config=ds_config, mpu=mpu)
    if not plain_path(cfg):
        return engine, None
    if layout.data == 1:
        # One data-parallel rank: DeepSpeed's gradient all-reduce would only flatten, copy and
        # unflatten every gradient (~6% of a small model's step on CPU).
        engine.enable_backward_allreduce = False
    clipper = GradClipper(cfg.optim.grad_clip)
    engine.optimizer.register_step_pre_hook(clipper)
    log(f"   gradient clipping at {cfg.optim.grad_clip} by bigtrain (whole-model norm, before each optimizer step)")
    return engine, clipper
