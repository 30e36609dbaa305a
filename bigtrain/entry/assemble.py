"""A run's components, built in one place and in this order: data plan → vocabulary → engine
(model, parallelism, precision, optimizer) → checkpointer (resume) → batches → meter → sinks →
callbacks. Each component gets its own config section; this module alone holds the whole `Config`
while building (with `build_engine` and the `Checkpointer`, which say why they take it).

The tensor-parallel plan is computed once here and handed to the engine, the loss and sampling.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from bigtrain.config.paths import nearest_existing
from bigtrain.config.schema import Config, ConfigError, DataConfig, ModelConfig
from bigtrain.data.blend import DataPlan, plan_builtin, plan_prepared
from bigtrain.data.corpus import DataError
from bigtrain.data.dataset import Batches, Prefetched, build_datasets
from bigtrain.data.prepare import cache_root, prepare
from bigtrain.metrics.comm import CommClock
from bigtrain.metrics.comm import measurable as comm_unmeasurable
from bigtrain.metrics.peak import peak_tflops
from bigtrain.metrics.sinks import Sinks
from bigtrain.metrics.throughput import Meter
from bigtrain.model.flops import parameter_count, train_flops_per_token
from bigtrain.model.gpt import lm_loss
from bigtrain.model.hf import load_hf_folder
from bigtrain.model.layers import TensorParallel, Vocab
from bigtrain.parallel.engine import build_engine
from bigtrain.parallel.state import Ranks, seed_everything, tensor_parallel_plan
from bigtrain.train import consolidated
from bigtrain.train.callbacks import Callbacks
from bigtrain.train.checkpoint import Checkpointer
from bigtrain.train.loop import Components, TrainState
from bigtrain.train.moe_stats import MoEStats
from bigtrain.train.rundir import RunDirError

# Bytes per parameter of one checkpoint: DeepSpeed's files (fp32 weights and two Adam moments, plus
# bf16/fp16 weights in mixed precision) and the layout-independent copy (fp32 weights and moments).
CHECKPOINT_BYTES_PER_PARAM = {"fp32": 12 + 12, "bf16": 14 + 12, "fp16": 14 + 12}


@dataclass
class Assembled:
    """What `build` made: the loop's components, where training starts, and what sampling needs."""

    parts: Components
    state: TrainState
    tokenizer: object
    vocab: Vocab
    tp: TensorParallel


def build(cfg: Config, run_dir: Path, ranks: Ranks, log, callbacks: list, undo: contextlib.ExitStack) -> Assembled:
    """Every component of the run on this rank. What needs undoing if the run ends early (the data
    thread, the sinks, the comm clock) or before another run in this process (the engine's gradient
    hooks) joins `undo`; closing the thread and the sinks twice is fine. `callbacks`: the caller's
    step callbacks, called after bigtrain's own (the guard's reset, the comm clock)."""
    t, layout = cfg.trainer, ranks.layout
    plan = plan_on_one_rank(cfg.data, cfg.model.seq_len, ranks, log)
    tokenizer = plan.tokenizer
    vocab = model_vocab(cfg.model, tokenizer.vocab_size, layout.tensor)
    params = parameter_count(cfg.model, vocab.padded)
    all_or_none(ranks, lambda: _check_checkpoint_space(cfg, run_dir, params), ranks.is_main, RunDirError)
    tp = tensor_parallel_plan(cfg.parallel, ranks)
    hooks = Callbacks()
    seed_everything(t.seed, ranks)
    engine = build_engine(cfg, ranks, vocab, tp, hooks.wrap_loss(functools.partial(lm_loss, tp=tp)), log=log)
    undo.callback(engine.release)
    seed_everything(t.seed, ranks)  # dropout streams independent of how many layers this rank built
    moe = MoEStats(engine.engine, ranks, cfg.model.n_layers, cfg.model.moe.experts) if cfg.model.moe.experts else None
    hooks.extend([engine.guard, _comm_clock(cfg, log, undo), moe, *callbacks])
    checkpointer = Checkpointer(cfg, ckpt_root(cfg, run_dir), ranks, vocab, tokenizer, hooks)
    resumed = checkpointer.resume(engine.engine, log)
    if resumed is None and cfg.model.init_from:
        _import_weights(cfg.model, engine.engine, ranks, vocab, log)
    state = TrainState(resumed["step"], resumed["consumed_samples"]) if resumed else TrainState()
    train_ds, val_ds = build_datasets(plan, cfg.model.seq_len, t.seed, t.max_steps * t.global_batch_size)
    batches = dict(
        global_batch=t.global_batch_size,
        micro_batch=t.micro_batch_size,
        dp_size=layout.data,
        dp_rank=ranks.dp,
        vocab_size=tokenizer.vocab_size,
        pin=torch.device(engine.engine.device).type == "cuda",
    )
    meter = _meter(cfg, vocab, params, layout.world_size, plan, log)
    sinks = _sinks(cfg, run_dir, state, params, layout) if ranks.is_main else None
    if sinks:
        undo.callback(sinks.close)
    train = undo.enter_context(contextlib.closing(Prefetched(Batches(train_ds, **batches))))
    parts = Components(engine, train, Batches(val_ds, **batches), meter, sinks, checkpointer, hooks)
    return Assembled(parts, state, tokenizer, vocab, tp)


def ckpt_root(cfg: Config, run_dir: Path) -> Path:
    return Path(cfg.trainer.ckpt_dir) if cfg.trainer.ckpt_dir else run_dir / "checkpoints"


def on_every_rank(err: Exception) -> Exception:
    """Mark an error that every rank raises identically (rank 0 alone reports it)."""
    err.on_every_rank = True
    return err


def all_or_none(ranks: Ranks, work, runs_here: bool, kind: type[Exception]):
    """Run `work` on the ranks where `runs_here`; if it fails on any rank, every rank raises `kind`
    with that message, instead of the others waiting forever at the next collective."""
    result, error = None, None
    if runs_here:
        try:
            result = work()
        except (ConfigError, DataError, RunDirError, OSError) as err:
            error = str(err)
    errors = [None] * ranks.layout.world_size
    torch.distributed.all_gather_object(errors, error)
    first = next((e for e in errors if e), None)
    if first:
        raise on_every_rank(kind(first))
    return result


def model_vocab(model: ModelConfig, tokenizer_vocab: int, tp_size: int) -> Vocab:
    """The run's vocabulary facts, computed once: the tokenizer's size unless model.vocab_size
    asks for more rows, padded for this tensor-parallel size."""
    size = model.vocab_size or tokenizer_vocab
    if size < tokenizer_vocab:
        raise ConfigError(
            f"model.vocab_size={size} is smaller than the tokenizer's {tokenizer_vocab}: "
            "set model.vocab_size=null to take the tokenizer's"
        )
    return Vocab.of(size, model.pad_vocab_multiple, tp_size)


def plan_on_one_rank(data: DataConfig, seq_len: int, ranks: Ranks, log) -> DataPlan:
    """Local rank 0 prepares the built-in corpora (once per node) or checks the prepared prefixes;
    the others then open the cached result without re-checking. A failure stops every rank."""

    def plan(first: bool) -> DataPlan:
        if data.source == "prepared":
            return plan_prepared(data, seq_len, cache_root(data) / "index-cache", check=first)
        return plan_builtin(prepare(data, log=log if first else lambda *a: None), seq_len)

    def plan_here() -> DataPlan:
        try:
            return plan(first=True)
        except OSError as err:
            if err.errno != errno.ENOSPC:
                raise
            raise DataError(
                f"no space left on the disk holding the data cache {cache_root(data)}: free space, or set "
                "data.cache_dir (or BIGTRAIN_CACHE) to a larger disk; a half-written cache is rebuilt next time"
            ) from None

    first = ranks.local_rank == 0
    return all_or_none(ranks, plan_here, first, DataError) or plan(first=False)


def _check_checkpoint_space(cfg: Config, run_dir: Path, params: int) -> None:
    """Rank 0, before training: the disk holding the checkpoints has room for one more."""
    root = ckpt_root(cfg, run_dir)
    need = params * CHECKPOINT_BYTES_PER_PARAM[cfg.precision.dtype]
    free = shutil.disk_usage(nearest_existing(root)).free
    if free < need:
        raise RunDirError(
            f"the disk holding {root} has {free / 1e9:.3g} GB free, but one checkpoint needs about "
            f"{need / 1e9:.3g} GB ({params:,} parameters × {CHECKPOINT_BYTES_PER_PARAM[cfg.precision.dtype]} bytes): "
            "free space, or point trainer.ckpt_dir (or run.root) at a larger disk"
        )


def _comm_clock(cfg: Config, log, undo: contextlib.ExitStack) -> CommClock | None:
    """logging.comm_time: a clock on the collectives, where their time can be measured, until the
    run ends."""
    if not cfg.logging.comm_time:
        return None
    why = comm_unmeasurable()
    if why:
        log(why)
        return None
    return undo.enter_context(CommClock())


def _sinks(cfg: Config, run_dir: Path, state: TrainState, params: int, layout) -> Sinks:
    """Rank 0's metric sinks; wandb gets the whole resolved config, the layout and the model size."""
    tags = (
        cfg.model.name,
        f"tp{layout.tensor}-pp{layout.pipeline}-dp{layout.data}",
        f"zero{cfg.parallel.zero_stage}",
        cfg.precision.dtype,
    )
    run_config = {**dataclasses.asdict(cfg), "layout": dataclasses.asdict(layout), "parameters": params}
    t = cfg.trainer
    return Sinks(cfg.logging, run_dir, t.max_steps, state.step, run_config, cfg.run.name, tags, cfg.model.seq_len)


def _meter(cfg: Config, vocab: Vocab, params: int, devices: int, plan: DataPlan, log) -> Meter:
    t = cfg.trainer
    peak = peak_tflops(cfg.precision.dtype, cfg.logging.peak_tflops)
    log(
        f"model: {cfg.model.name}, {params:,} parameters, vocab {vocab.size}; "
        f"data: {plan.description} ({plan.tokens('train'):,} train / "
        f"{plan.tokens('val'):,} val tokens); MFU peak: {tflops_text(peak.tflops)} TFLOP/s ({peak.source})"
    )
    return Meter(
        tokens_per_step=t.global_batch_size * cfg.model.seq_len,
        flops_per_token=train_flops_per_token(cfg.model, vocab.size),
        devices=devices,
        peak=peak,
    )


def tflops_text(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.4g}"


def _import_weights(model: ModelConfig, engine, ranks: Ranks, vocab: Vocab, log) -> None:
    """model.init_from: start from a Hugging Face folder's weights (continued pretraining)."""
    tensors = load_hf_folder(Path(model.init_from), model, vocab.size)
    consolidated.load(engine, Path(model.init_from), model.n_layers, ranks, vocab, tensors=tensors)
    log(f"initialized weights from Hugging Face folder {model.init_from}")
