"""One training run: validated config → process groups → data → model → loop → sample.

The orchestrator: it alone holds the whole `Config` and hands each component its own section."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

import torch

from bigtrain.config.hydra import to_config
from bigtrain.config.schema import Config, ConfigError, DataConfig, ModelConfig
from bigtrain.config.validate import validate
from bigtrain.data.blend import DataPlan, plan_builtin, plan_prepared
from bigtrain.data.corpus import DataError
from bigtrain.data.dataset import Batches, Prefetched, build_datasets
from bigtrain.data.prepare import cache_root, prepare
from bigtrain.faults import fault_point
from bigtrain.metrics.comm import CommClock
from bigtrain.metrics.comm import measurable as comm_unmeasurable
from bigtrain.metrics.peak import peak_tflops
from bigtrain.metrics.sinks import Sinks
from bigtrain.metrics.throughput import Meter, peak_memory_gb
from bigtrain.model.flops import parameter_count, train_flops_per_token
from bigtrain.model.gpt import lm_loss
from bigtrain.model.hf import ExportError, load_hf_folder
from bigtrain.model.layers import Vocab
from bigtrain.parallel import state as pstate
from bigtrain.parallel.engine import build_engine
from bigtrain.parallel.health import PeerLost, describe, lost_peer
from bigtrain.parallel.pipeline import pipeline_logits
from bigtrain.parallel.state import Ranks, seed_everything, tensor_parallel_plan
from bigtrain.plan import Cluster, plan, planning_vocab, report
from bigtrain.process import rank_prefix, set_threads, set_verbosity, threads_kept, with_rank
from bigtrain.train import consolidated
from bigtrain.train.checkpoint import Checkpointer, CheckpointError, latest_checkpoint, read_meta
from bigtrain.train.loop import NonFiniteError, Trainer, TrainState
from bigtrain.train.rundir import RunDirError, RunLock, nearest_existing, set_aside
from bigtrain.train.sample import evaluating, generate, last_logits

EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: stopped by SIGTERM/SIGUSR1 after saving; relaunch to continue
# Written into the run directory when a signal stopped the run after its checkpoint was saved. A
# job script reads it rather than the launcher's exit status alone: srun --kill-on-bad-exit may
# kill the last ranks while they exit 75, and then reports the kill instead.
STOPPED_FILE = "stopped.json"


def main(tree, run_dir: str) -> int:
    """Entry point behind `bigtrain-pretrain`: typed config errors become one line and exit code 2.
    An error every rank reached alike is printed by rank 0 only; one of a single rank carries its
    rank."""
    rank = int(os.environ.get("RANK", "0"))
    try:
        try:
            cfg = to_config(tree)
        except ConfigError as err:
            raise _on_every_rank(err) from None
        summary = run(cfg, Path(run_dir))
    except (ConfigError, DataError, CheckpointError, ExportError, RunDirError) as err:
        if rank == 0 or not getattr(err, "on_every_rank", False):
            print(f"{rank_prefix(rank)}bigtrain: error: {err}", file=sys.stderr, flush=True)
        return 2
    except (PeerLost, NonFiniteError) as err:  # every rank sees the same numbers; a lost peer is per rank
        if rank == 0 or isinstance(err, PeerLost):
            print(f"{rank_prefix(rank)}bigtrain: error: {err}", file=sys.stderr, flush=True)
        return 1
    except Exception:  # a bug or a library's failure: the whole traceback, with the rank on each line
        print(with_rank(rank, traceback.format_exc()), file=sys.stderr, flush=True)
        return 1
    return EXIT_INTERRUPTED if summary.get("interrupted") else 0


def _dry_run(cfg: Config, layout) -> dict:
    """trainer.dry_run: the planner's prediction for this layout on this machine; no process group."""
    try:
        cluster = Cluster.this_machine(layout.world_size, cfg.precision.dtype, cfg.logging.peak_tflops)
        prediction = plan(cfg, cluster, layout, planning_vocab(cfg))
    except ConfigError as err:
        raise _on_every_rank(err) from None
    if int(os.environ.get("RANK", "0")) == 0:
        print(report(prediction, cfg), flush=True)
    return {"dry_run": True, "fits": prediction.fits}


def _on_every_rank(err: Exception) -> Exception:
    """Mark an error that every rank raises identically (rank 0 alone reports it)."""
    err.on_every_rank = True
    return err


def run(cfg: Config, run_dir: Path) -> dict:
    """Train as configured; returns the final summary (validation loss, perplexity, sample).

    Re-entrant: whatever the run changes in its process (process groups, signal handlers, timed
    collectives, threads, compiled graphs) is undone when it returns or raises, so one process can
    run one job after another (a notebook, a sweep, the test suite's warm workers)."""
    try:
        layout = validate(cfg)  # before any process group
    except ConfigError as err:
        raise _on_every_rank(err) from None
    if cfg.trainer.dry_run:
        return _dry_run(cfg, layout)
    set_verbosity(cfg.logging.verbose)
    with contextlib.ExitStack() as undo:
        undo.enter_context(threads_kept())
        threads = set_threads(cfg.trainer.threads, cfg.trainer.pin_cores)
        ranks = pstate.init_distributed(layout, cfg.parallel.collective_timeout_s)
        undo.callback(pstate.destroy)
        log = print if ranks.is_main else (lambda *a, **k: None)
        log(f"cpu: {threads}" if ranks.device.type == "cpu" else f"host threads: {threads}")
        lock = RunLock(run_dir)
        undo.callback(lock.release)
        _all_or_none(ranks, lambda: _claim(cfg, run_dir, lock, log), ranks.is_main, RunDirError)
        return _train(cfg, run_dir, ranks, log, undo)


def _claim(cfg: Config, run_dir: Path, lock: RunLock, log) -> None:
    """Rank 0: lock the run directory for this job; with run.fresh, set the previous run aside."""
    lock.acquire()
    (run_dir / STOPPED_FILE).unlink(missing_ok=True)
    if cfg.run.fresh:
        aside = set_aside(run_dir, _ckpt_root(cfg, run_dir))
        if aside:
            log(f"run.fresh=true: the previous run's checkpoints and metrics moved to {aside}")


def _ckpt_root(cfg: Config, run_dir: Path) -> Path:
    return Path(cfg.trainer.ckpt_dir) if cfg.trainer.ckpt_dir else run_dir / "checkpoints"


def _all_or_none(ranks: Ranks, work, runs_here: bool, kind: type[Exception]):
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
        raise _on_every_rank(kind(first))
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


def _train(cfg: Config, run_dir: Path, ranks: Ranks, log, undo: contextlib.ExitStack) -> dict:
    t, layout = cfg.trainer, ranks.layout
    latest = latest_checkpoint(_ckpt_root(cfg, run_dir))
    done = read_meta(latest)["step"] if latest else 0
    if done >= t.max_steps:  # before any data or model is built
        log(
            f"run {cfg.run.name} is already complete at step {done} ({run_dir}): raise trainer.max_steps to "
            "train on, pass another run.name for a new run, or run.fresh=true to start this one over"
        )
        summary = run_dir / "summary.json"
        return json.loads(summary.read_text()) if summary.is_file() else {"step": done, "interrupted": False}
    plan = _plan_on_one_rank(cfg.data, cfg.model.seq_len, ranks, log)
    tokenizer = plan.tokenizer
    vocab = model_vocab(cfg.model, tokenizer.vocab_size, layout.tensor)
    params = parameter_count(cfg.model, vocab.padded)
    _all_or_none(ranks, lambda: _check_checkpoint_space(cfg, run_dir, params), ranks.is_main, RunDirError)
    seed_everything(t.seed, ranks)
    engine, clipper, guard = build_engine(cfg, ranks, vocab, log=log)
    seed_everything(t.seed, ranks)  # dropout streams independent of how many layers this rank built
    checkpointer = Checkpointer(cfg, _ckpt_root(cfg, run_dir), ranks, vocab, tokenizer)
    resumed = checkpointer.resume(engine, log)
    if resumed is None and cfg.model.init_from:
        _import_weights(cfg.model, engine, ranks, vocab, log)
    state = TrainState(resumed["step"], resumed["consumed_samples"]) if resumed else TrainState()
    train_ds, val_ds = build_datasets(plan, cfg.model.seq_len, t.seed, t.max_steps * t.global_batch_size)
    batches = dict(
        global_batch=t.global_batch_size,
        micro_batch=t.micro_batch_size,
        dp_size=layout.data,
        dp_rank=ranks.dp,
        vocab_size=tokenizer.vocab_size,
        pin=torch.device(engine.device).type == "cuda",
    )
    meter = _meter(cfg, vocab, params, layout.world_size, plan, log)
    sinks = _sinks(cfg, run_dir, state, params, layout) if ranks.is_main else None
    train_batches = Prefetched(Batches(train_ds, **batches))
    loss_fn = functools.partial(lm_loss, tp=tensor_parallel_plan(cfg.parallel, ranks))
    trainer = Trainer(
        t,
        cfg.optim,
        engine,
        ranks,
        train_batches,
        Batches(val_ds, **batches),
        meter,
        sinks,
        checkpointer,
        state,
        loss_fn,
        clipper,
        guard,
        log,
        min_loss_scale=cfg.precision.min_loss_scale if cfg.precision.dtype == "fp16" else None,
        comm=_comm_clock(cfg, log, undo),
    )
    undo.enter_context(checkpointer.stop_on_signals())  # to the end of the run, the final sample too
    if t.compile:  # the next run in this process compiles and counts its own graphs
        undo.callback(torch._dynamo.utils.counters.clear)
        undo.callback(torch._dynamo.reset)
    try:
        trainer.fit()
    except RuntimeError as err:  # gloo/NCCL: a broken connection or a timeout
        if layout.world_size == 1 or isinstance(err, NonFiniteError) or not lost_peer(err):
            raise
        latest = latest_checkpoint(checkpointer.root)
        step, saving = trainer.state.step, checkpointer.saving
        raise describe(err, ranks.rank, layout.world_size, step, saving, latest and latest.name) from None
    finally:
        train_batches.close()
        if sinks:
            sinks.close()
    if t.compile:
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        what = "the model's" if t.compile_scope == "model" else "a block's"
        log(f"torch.compile: {graphs} graphs compiled (dynamo's count: {what} training and evaluation forward)")
    return _finish(cfg, run_dir, ranks, engine, trainer, tokenizer, vocab, log)


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
        f"{plan.tokens('val'):,} val tokens); MFU peak: {_tflops(peak.tflops)} TFLOP/s ({peak.source})"
    )
    return Meter(
        tokens_per_step=t.global_batch_size * cfg.model.seq_len,
        flops_per_token=train_flops_per_token(cfg.model, vocab.size),
        devices=devices,
        peak=peak,
    )


def _tflops(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.4g}"


def _import_weights(model: ModelConfig, engine, ranks: Ranks, vocab: Vocab, log) -> None:
    """model.init_from: start from a Hugging Face folder's weights (continued pretraining)."""
    tensors = load_hf_folder(Path(model.init_from), model, vocab.size)
    consolidated.load(engine, Path(model.init_from), model.n_layers, ranks, vocab, tensors=tensors)
    log(f"initialized weights from Hugging Face folder {model.init_from}")


def _finish(cfg: Config, run_dir: Path, ranks: Ranks, engine, trainer: Trainer, tokenizer, vocab: Vocab, log) -> dict:
    """Final evaluation, memory report, text sample and summary.json."""
    t, layout, state = cfg.trainer, ranks.layout, trainer.state
    memory = [None] * layout.world_size
    torch.distributed.all_gather_object(memory, round(peak_memory_gb(), 4))
    summary = {
        "step": state.step,
        "interrupted": trainer.interrupted,
        "val_loss": trainer.last_val,
        "val_ppl": None if trainer.last_val is None else float(torch.tensor(trainer.last_val).exp()),
        "peak_mem_gb_per_rank": memory,
        "mfu_peak_tflops": trainer.meter.peak.tflops,
        "mfu_peak_source": trainer.meter.peak.source,
    }
    if trainer.interrupted:
        if ranks.is_main:
            stopped = {"step": state.step, "checkpoints": str(trainer.checkpointer.root), "time": time.time()}
            (run_dir / STOPPED_FILE).write_text(json.dumps(stopped))
        torch.distributed.barrier()
        fault_point("slow_exit", state.step)
        log(
            f"stopped by a signal after step {state.step}; the checkpoint is saved in {trainer.checkpointer.root}: "
            f"relaunch the same command (run.name={cfg.run.name}) to continue"
        )
        return summary
    if t.eval_full_split_at_end:
        summary["val_loss_full_split"] = trainer.evaluate(trainer.full_split_batches())
    if t.sample_tokens > 0:
        summary["sample"] = _sample(cfg, engine, ranks, tokenizer, vocab)
    if ranks.is_main:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        if summary["val_loss"] is not None:
            log(
                f"\nvalidation loss {summary['val_loss']:.4f}, perplexity {summary['val_ppl']:.2f} "
                f"after {state.step} steps"
            )
        log(f"MFU against {_tflops(trainer.meter.peak.tflops)} TFLOP/s per device ({trainer.meter.peak.source})")
        if "sample" in summary:
            log("sample:\n" + "-" * 60 + "\n" + summary["sample"] + "\n" + "-" * 60)
    return summary


def _sample(cfg: Config, engine, ranks: Ranks, tokenizer, vocab: Vocab) -> str:
    """The end-of-run sample, in any layout: every rank takes part and all draw the same tokens."""
    t = cfg.trainer
    if ranks.layout.pipeline > 1:
        tp = tensor_parallel_plan(cfg.parallel, ranks)
        next_logits = pipeline_logits(engine.module, ranks, tp, cfg.model.d_model, vocab)
    else:
        next_logits = last_logits(engine.module)
    prompt = tokenizer.encode(t.sample_prompt) if t.sample_prompt else [tokenizer.eod]
    # compiled code would recompile for every prompt length: sampling runs eager
    eager = torch.compiler.set_stance("force_eager") if t.compile else contextlib.nullcontext()
    with evaluating(engine.module), eager:
        ids = generate(
            next_logits,
            prompt,
            t.sample_tokens,
            cfg.model.seq_len,
            t.sample_temperature,
            t.sample_top_k,
            seed=t.seed,
            device=engine.device,
        )
    return t.sample_prompt + tokenizer.decode(ids)


# Bytes per parameter of one checkpoint: DeepSpeed's files (fp32 weights and two Adam moments, plus
# bf16/fp16 weights in mixed precision) and the layout-independent copy (fp32 weights and moments).
CHECKPOINT_BYTES_PER_PARAM = {"fp32": 12 + 12, "bf16": 14 + 12, "fp16": 14 + 12}


def _check_checkpoint_space(cfg: Config, run_dir: Path, params: int) -> None:
    """Rank 0, before training: the disk holding the checkpoints has room for one more."""
    root = _ckpt_root(cfg, run_dir)
    need = params * CHECKPOINT_BYTES_PER_PARAM[cfg.precision.dtype]
    free = shutil.disk_usage(nearest_existing(root)).free
    if free < need:
        raise RunDirError(
            f"the disk holding {root} has {free / 1e9:.3g} GB free, but one checkpoint needs about "
            f"{need / 1e9:.3g} GB ({params:,} parameters × {CHECKPOINT_BYTES_PER_PARAM[cfg.precision.dtype]} bytes): "
            "free space, or point trainer.ckpt_dir (or run.root) at a larger disk"
        )


def _plan_on_one_rank(data: DataConfig, seq_len: int, ranks: Ranks, log) -> DataPlan:
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
    return _all_or_none(ranks, plan_here, first, DataError) or plan(first=False)
