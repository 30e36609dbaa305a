"""The DeepSpeed config, generated from ours: never written by hand."""

from __future__ import annotations

from bigtrain.config.schema import Config
from bigtrain.config.validate import Layout


def plain_path(cfg: Config) -> bool:
    """ZeRO 0 and fp32: DeepSpeed steps the client optimizer as it is, pipeline stages or not.

    There DeepSpeed's own clipping would see one pipeline stage's gradients only and never report
    their norm, so bigtrain measures the whole model's norm and clips, once
    (`bigtrain.parallel.clipping`). Everywhere else DeepSpeed's ZeRO or mixed-precision optimizer
    clips, counting each parameter once across stages, and reports the norm it used.
    """
    return cfg.parallel.zero_stage == 0 and cfg.precision.dtype == "fp32"


def deepspeed_config(cfg: Config, layout: Layout) -> dict:
    prec, t = cfg.precision, cfg.trainer
    ds = {
        "train_batch_size": t.global_batch_size,
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": layout.grad_accum,
        "gradient_clipping": 0.0 if plain_path(cfg) else cfg.optim.grad_clip,
        "steps_per_print": 10**9,  # bigtrain's own metrics report progress
        "wall_clock_breakdown": False,
        "zero_optimization": {"stage": cfg.parallel.zero_stage},
        "seed": t.seed,
    }
    if prec.dtype != "fp32" and cfg.parallel.zero_stage == 0:
        # Mixed precision runs on ZeRO stage 1 at least: at stage 0 DeepSpeed would step a bf16
        # model's optimizer on bf16 weights, and its stage-0 fp16 optimizer does not scale a
        # client optimizer's loss (every step is lost at a large scale). Stage 1 keeps fp32 master
        # weights and dynamic loss scaling; with one data-parallel rank it shards nothing.
        ds["zero_optimization"]["stage"] = 1
    if prec.dtype == "bf16":
        ds["bf16"] = {"enabled": True}
        if prec.fp32_grad_accum and ds["zero_optimization"]["stage"] == 1:
            # fp32 gradient accumulation: DeepSpeed's BF16 optimizer, selected for stage 1 only.
            ds["data_types"] = {"grad_accum_dtype": "fp32"}
    elif prec.dtype == "fp16":
        ds["fp16"] = {
            "enabled": True,
            "loss_scale": 0,  # 0 = dynamic
            "initial_scale_power": prec.initial_scale_power,
            "loss_scale_window": prec.loss_scale_window,
            "hysteresis": prec.hysteresis,
            "min_loss_scale": prec.min_loss_scale,
        }
    if cfg.parallel.zero_stage == 3:
        # Gather small layers whole; the defaults assume billion-parameter models.
        ds["zero_optimization"].update({"stage3_param_persistence_threshold": 0})
    if layout.pipeline > 1:
        ds["pipeline"] = {"activation_checkpoint_interval": 0}
    return ds
