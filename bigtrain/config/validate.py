"""Cross-field rules and derived values, checked before any process group exists."""

from __future__ import annotations

import os
from dataclasses import dataclass

from bigtrain.config.blend import parse_blend
from bigtrain.config.schema import Config, ConfigError


@dataclass(frozen=True)
class Layout:
    """How `world_size` ranks split into tensor × pipeline × data parallel groups.

    The single source of truth for the data-parallel size and gradient-accumulation steps.
    """

    world_size: int
    tensor: int
    pipeline: int
    data: int
    grad_accum: int


def world_size_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def validate(cfg: Config, world_size: int | None = None) -> Layout:
    """Check every rule that needs more than one field; return the derived layout."""
    world_size = world_size_from_env() if world_size is None else world_size
    m, p, t = cfg.model, cfg.parallel, cfg.trainer
    _positive(cfg)
    if m.d_model % m.n_heads:
        raise ConfigError(
            f"model.d_model={m.d_model} is not divisible by model.n_heads={m.n_heads}: "
            "pick d_model = n_heads × head_dim"
        )
    if m.n_heads % m.kv_heads:
        raise ConfigError(
            f"model.n_heads={m.n_heads} is not divisible by model.n_kv_heads={m.kv_heads}: "
            "grouped-query attention needs whole groups"
        )
    if m.position == "rope" and m.head_dim % 2:
        raise ConfigError(
            f"model.position=rope needs an even head_dim, got {m.head_dim}: change model.d_model or model.n_heads"
        )
    if p.zero_stage not in (0, 1, 2, 3):
        raise ConfigError(f"parallel.zero_stage={p.zero_stage} is not allowed: use 0, 1, 2 or 3")
    tp, pp = p.tensor_parallel, p.pipeline_parallel
    if m.n_heads % tp:
        raise ConfigError(
            f"model.n_heads={m.n_heads} is not divisible by parallel.tensor_parallel={tp}: "
            f"pick tensor_parallel from the divisors of {m.n_heads}"
        )
    if m.kv_heads % tp:
        raise ConfigError(
            f"model.n_kv_heads={m.kv_heads} is not divisible by parallel.tensor_parallel={tp}: "
            f"pick tensor_parallel from the divisors of {m.kv_heads}"
        )
    if m.ffn_dim % tp:
        raise ConfigError(f"model.ffn_hidden={m.ffn_dim} is not divisible by parallel.tensor_parallel={tp}")
    if p.sequence_parallel and tp == 1:
        raise ConfigError(
            "parallel.sequence_parallel=true needs parallel.tensor_parallel > 1: "
            "set tensor_parallel=2 or more, or sequence_parallel=false"
        )
    if p.sequence_parallel and m.seq_len % tp:
        raise ConfigError(
            f"model.seq_len={m.seq_len} is not divisible by parallel.tensor_parallel={tp}, "
            "which sequence parallel needs"
        )
    if m.n_layers < pp:
        raise ConfigError(
            f"model.n_layers={m.n_layers} is less than parallel.pipeline_parallel={pp}: "
            "every pipeline stage needs at least one layer"
        )
    if pp > 1 and p.zero_stage >= 2:
        raise ConfigError(
            f"parallel.zero_stage={p.zero_stage} cannot combine with pipeline_parallel={pp}: "
            "DeepSpeed pipelines support ZeRO 0 or 1; set parallel.zero_stage=1"
        )
    _check_compile(cfg)
    _check_moe(cfg)
    if world_size % (tp * pp):
        raise ConfigError(
            f"world size {world_size} is not divisible by tensor_parallel × pipeline_parallel "
            f"= {tp}×{pp}: launch a multiple of {tp * pp} processes"
        )
    dp = world_size // (tp * pp)
    per_step = t.micro_batch_size * dp
    if t.global_batch_size % per_step:
        raise ConfigError(
            f"trainer.global_batch_size={t.global_batch_size} is not divisible by "
            f"micro_batch_size × data_parallel = {t.micro_batch_size}×{dp}: "
            f"use a multiple of {per_step}"
        )
    name = cfg.run.name
    if not name.strip() or name.startswith("/") or ".." in name.split("/"):
        raise ConfigError(f"run.name={name!r} must be a relative name inside run.root: pass run.name=<name>")
    if cfg.data.source == "text" and not cfg.data.path:
        raise ConfigError("data.source=text needs data.path: pass data.path=/path/to/corpus.txt")
    if cfg.data.source == "prepared" and not parse_blend(cfg.data.blend, "data.blend"):
        raise ConfigError("data.source=prepared needs data.blend: pass data.blend=[0.3,/data/a,0.7,/data/b]")
    held_out = cfg.data.source != "prepared" or not parse_blend(cfg.data.valid_blend, "data.valid_blend")
    if held_out and not 0.0 < cfg.data.val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction={cfg.data.val_fraction} must be in (0, 1)")
    if cfg.optim.min_lr > cfg.optim.lr:
        raise ConfigError(f"optim.min_lr={cfg.optim.min_lr} exceeds optim.lr={cfg.optim.lr}: lower min_lr")
    return Layout(world_size, tp, pp, dp, t.global_batch_size // per_step)


def _check_moe(cfg: Config) -> None:
    """model.moe's rules: enough experts for the top-k, at least one MoE layer, what composes."""
    moe, m, p = cfg.model.moe, cfg.model, cfg.parallel
    if moe.experts == 0:
        return
    if moe.experts < 2:
        raise ConfigError(
            f"model.moe.experts={moe.experts}: a mixture needs 2 experts or more (0 keeps the model dense)"
        )
    if not 1 <= moe.top_k <= moe.experts:
        raise ConfigError(f"model.moe.top_k={moe.top_k} must be between 1 and model.moe.experts={moe.experts}")
    if not 1 <= moe.every <= m.n_layers:
        raise ConfigError(
            f"model.moe.every={moe.every} must be between 1 and model.n_layers={m.n_layers}: "
            "1 makes every layer MoE, 2 every other one"
        )
    for key in ("ffn_hidden", "capacity_factor"):
        value = getattr(moe, key)
        if value is not None and value <= 0:
            raise ConfigError(f"model.moe.{key}={value} must be positive (null: {_MOE_NULL[key]})")
    for key in ("shared_experts", "aux_loss_coef", "z_loss_coef"):
        if getattr(moe, key) < 0:
            raise ConfigError(f"model.moe.{key}={getattr(moe, key)} must be 0 or more")
    tp = p.tensor_parallel
    if m.expert_ffn_dim % tp:
        raise ConfigError(
            f"the experts' hidden size {m.expert_ffn_dim} (model.moe.ffn_hidden) is not divisible by "
            f"parallel.tensor_parallel={tp}"
        )
    if p.sequence_parallel:
        raise ConfigError(
            "model.moe cannot combine with parallel.sequence_parallel=true: routing needs every position of the "
            "micro-batch on each tensor-parallel rank; set parallel.sequence_parallel=false"
        )
    if p.zero_stage == 3:
        raise ConfigError(
            "model.moe cannot combine with parallel.zero_stage=3 yet (not tested with routed experts): "
            "use parallel.zero_stage=1 or 2"
        )


_MOE_NULL = {"ffn_hidden": "the dense MLP's size", "capacity_factor": "dropless routing"}


def _check_compile(cfg: Config) -> None:
    """trainer.compile where bigtrain has not verified it against eager: refused, with the reason."""
    if not cfg.trainer.compile:
        return
    p = cfg.parallel
    reasons = [
        (
            p.tensor_parallel > 1,
            f"parallel.tensor_parallel={p.tensor_parallel}",
            "megatron-core's tensor-parallel "
            "layers run their collectives inside custom autograd functions that the compiler would split around",
        ),
        (
            p.pipeline_parallel > 1,
            f"parallel.pipeline_parallel={p.pipeline_parallel}",
            "DeepSpeed's pipeline engine runs each stage's layers itself",
        ),
        (
            p.zero_stage == 3,
            "parallel.zero_stage=3",
            "ZeRO-3 gathers each parameter in a hook around every module, which a compiled block would bypass",
        ),
        (
            cfg.trainer.activation_checkpointing != "none",
            f"trainer.activation_checkpointing={cfg.trainer.activation_checkpointing}",
            "recomputing a compiled block is not verified against eager",
        ),
    ]
    for refused, setting, why in reasons:
        if refused:
            raise ConfigError(
                f"trainer.compile=true cannot combine with {setting}: {why}; set trainer.compile=false "
                "(or change the layout)"
            )


def _default(key: str):
    """The schema's default for a dotted key (what the fix in a message suggests)."""
    section, name = key.split(".")
    return getattr(getattr(Config(), section), name)


def _fix(key: str) -> str:
    default = _default(key)
    return f"set {key}={default} (the default)" if default is not None else f"leave {key} unset (null)"


# (key, allowed, what the message says it must be): every single-field range rule in one table.
_RANGES = [
    *[
        (key, lambda v: v > 0, "must be positive")
        for key in (
            "model.n_layers",
            "model.n_heads",
            "model.d_model",
            "model.seq_len",
            "model.pad_vocab_multiple",
            "parallel.tensor_parallel",
            "parallel.pipeline_parallel",
            "parallel.collective_timeout_s",
            "trainer.max_steps",
            "trainer.micro_batch_size",
            "trainer.global_batch_size",
            "trainer.eval_interval",
            "trainer.eval_iters",
            "trainer.log_interval",
            "trainer.keep_last",
            "trainer.max_skipped_steps",
            "trainer.spike_window",
            "trainer.spike_zscore",
            "data.vocab_size",
            "optim.lr",
            "optim.eps",
        )
    ],
    *[
        (key, lambda v: v >= 0, "must not be negative")
        for key in (
            "trainer.save_interval",
            "trainer.sample_tokens",
            "trainer.sample_top_k",
            "trainer.sample_temperature",
            "optim.warmup_steps",
            "optim.weight_decay",
            "optim.grad_clip",
            "optim.min_lr",
        )
    ],
    ("optim.beta1", lambda v: 0 <= v < 1, "must be in [0, 1)"),
    ("optim.beta2", lambda v: 0 <= v < 1, "must be in [0, 1)"),
    ("model.dropout", lambda v: 0 <= v < 1, "must be in [0, 1)"),
    ("model.n_kv_heads", lambda v: v is None or v > 0, "must be positive"),
    ("model.vocab_size", lambda v: v is None or v > 0, "must be positive"),
    ("optim.decay_steps", lambda v: v is None or v > 0, "must be positive"),
    ("logging.peak_tflops", lambda v: v is None or v > 0, "must be positive"),
    ("trainer.threads", lambda v: v is None or v > 0, "must be positive"),
]


def _positive(cfg: Config) -> None:
    for key, allowed, rule in _RANGES:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if not allowed(value):
            raise ConfigError(f"{key}={value} {rule}: {_fix(key)}")
