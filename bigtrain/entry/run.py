"""One training run, as a recipe: validated config → process groups → components
(bigtrain/entry/assemble.py) → the loop → final evaluation, sample and summary.

`run` is re-entrant: whatever it changes in its process is undone when it returns or raises."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch

from bigtrain.config.hydra import to_config
from bigtrain.config.schema import Config, ConfigError
from bigtrain.config.validate import validate
from bigtrain.data.corpus import DataError
from bigtrain.entry.assemble import Assembled, all_or_none, build, ckpt_root, on_every_rank, tflops_text
from bigtrain.entry.process import rank_prefix, set_threads, set_verbosity, threads_kept, with_rank
from bigtrain.metrics.throughput import peak_memory_gb
from bigtrain.model.hf import ExportError
from bigtrain.parallel import state as pstate
from bigtrain.parallel.health import PeerLost, describe, lost_peer
from bigtrain.parallel.pipeline import pipeline_logits
from bigtrain.parallel.plan import Cluster, plan, planning_vocab, report
from bigtrain.parallel.state import Ranks
from bigtrain.train.checkpoint import CheckpointError, latest_checkpoint, read_meta
from bigtrain.train.faults import FaultInjector
from bigtrain.train.loop import NonFiniteError, Trainer
from bigtrain.train.rundir import RunDirError, RunLock, set_aside
from bigtrain.train.sample import evaluating, generate, last_logits

EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: stopped by SIGTERM/SIGUSR1 after saving; relaunch to continue
# Written into the run directory when a signal stopped the run after its checkpoint was saved. A
# job script reads it rather than the launcher's exit status alone: srun --kill-on-bad-exit may
# kill the last ranks while they exit 75, and then reports the kill instead.
STOPPED_FILE = "stopped.json"


def main(tree, run_dir: str) -> int:
    """Entry point behind `bigtrain-pretrain`: typed config errors become one line and exit code 2.
    An error every rank reached alike is printed by rank 0 only; one of a single rank carries its
    rank. BIGTRAIN_FAULT (tests: bigtrain/train/faults.py) adds its fault injector to the run."""
    rank = int(os.environ.get("RANK", "0"))
    try:
        try:
            cfg = to_config(tree)
        except ConfigError as err:
            raise on_every_rank(err) from None
        summary = run(cfg, Path(run_dir), faults=os.environ.get("BIGTRAIN_FAULT", ""))
    except (ConfigError, DataError, CheckpointError, ExportError, RunDirError) as err:
        if rank == 0 or not getattr(err, "on_every_rank", False):
            print(f"{rank_prefix(rank)}bigtrain: error: {err}", file=sys.stderr, flush=True)
        return 2
    except (PeerLost, NonFiniteError) as err:  # every rank sees the same numbers; a lost peer is per rank
        if rank == 0 or isinstance(err, PeerLost):
            print(f"{rank_prefix(rank)}bigtrain: error: {err}", file=sys.stderr, flush=True)
        if isinstance(err, PeerLost):  # only now: the launcher ends this rank once it sees them die
            err.end_hung()
        return 1
    except Exception:  # a bug or a library's failure: the whole traceback, with the rank on each line
        print(with_rank(rank, traceback.format_exc()), file=sys.stderr, flush=True)
        return 1
    return EXIT_INTERRUPTED if summary.get("interrupted") else 0


def run(cfg: Config, run_dir: Path, callbacks: list | tuple = (), faults: str = "") -> dict:
    """Train as configured; returns the final summary (validation loss, perplexity, sample).

    `callbacks`: step callbacks (bigtrain/train/callbacks.py) of the caller; `faults`: faults to
    inject (a BIGTRAIN_FAULT value, for tests). Re-entrant: whatever the run changes in its process
    (process groups, signal handlers, timed collectives, threads, compiled graphs) is undone when
    it returns or raises, so one process can run one job after another (a notebook, a sweep, the
    test suite's warm workers). A PeerLost it raises names the lost ranks; those hung on this host
    are still running until its `end_hung()` (after the caller has reported it)."""
    try:
        layout = validate(cfg)  # before any process group
    except ConfigError as err:
        raise on_every_rank(err) from None
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
        all_or_none(ranks, lambda: _claim(cfg, run_dir, lock, log), ranks.is_main, RunDirError)
        latest = latest_checkpoint(ckpt_root(cfg, run_dir))
        done = read_meta(latest)["step"] if latest else 0
        if done >= cfg.trainer.max_steps:  # before any data or model is built
            return _complete(cfg, run_dir, done, log)
        injector = FaultInjector(faults, ranks.rank, layout.world_size) if faults else None
        built = build(cfg, run_dir, ranks, log, [*callbacks, injector], undo)
        undo.enter_context(built.parts.checkpointer.stop_on_signals())  # to the end, the final sample too
        if cfg.trainer.compile:  # the next run in this process compiles and counts its own graphs
            undo.callback(torch._dynamo.utils.counters.clear)
            undo.callback(torch._dynamo.reset)
            undo.callback(_stop_compile_threads)
        trainer = Trainer(cfg.trainer, cfg.optim, ranks, built.parts, built.state, log)
        _fit(trainer, ranks)
        summary = _finish(cfg, run_dir, ranks, trainer, built, log)
        built.parts.callbacks.exit(summary)
        return summary


def _claim(cfg: Config, run_dir: Path, lock: RunLock, log) -> None:
    """Rank 0: lock the run directory for this job; with run.fresh, set the previous run aside."""
    lock.acquire()
    (run_dir / STOPPED_FILE).unlink(missing_ok=True)
    if cfg.run.fresh:
        aside = set_aside(run_dir, ckpt_root(cfg, run_dir))
        if aside:
            log(f"run.fresh=true: the previous run's checkpoints and metrics moved to {aside}")


def _complete(cfg: Config, run_dir: Path, done: int, log) -> dict:
    """A run whose latest checkpoint is at trainer.max_steps trains nothing."""
    log(
        f"run {cfg.run.name} is already complete at step {done} ({run_dir}): raise trainer.max_steps to "
        "train on, pass another run.name for a new run, or run.fresh=true to start this one over"
    )
    summary = run_dir / "summary.json"
    return json.loads(summary.read_text()) if summary.is_file() else {"step": done, "interrupted": False}


def _fit(trainer: Trainer, ranks: Ranks) -> None:
    """The loop; a peer lost in it (a broken connection, a timeout) becomes one PeerLost line."""
    world, parts = ranks.layout.world_size, trainer.parts
    try:
        trainer.fit()
    except RuntimeError as err:  # gloo/NCCL: a broken connection or a timeout
        if world == 1 or isinstance(err, NonFiniteError) or not lost_peer(err):
            raise
        latest = latest_checkpoint(parts.checkpointer.root)
        step, saving = trainer.state.step, parts.checkpointer.saving
        raise describe(err, ranks.rank, world, step, saving, latest and latest.name) from None
    finally:  # the progress bar ends before the final lines; the data thread stops
        parts.train.close()
        if parts.sinks:
            parts.sinks.close()
    t = trainer.t
    if t.compile:
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        what = "the model's" if t.compile_scope == "model" else "a block's"
        trainer.log(f"torch.compile: {graphs} graphs compiled (dynamo's count: {what} training and evaluation forward)")


def _stop_compile_threads() -> None:
    """End the thread pool inductor keeps for compiling kernels (it starts one per process on the
    first compile and keeps it); the next compiling run starts its own."""
    from torch._inductor.async_compile import AsyncCompile, shutdown_compile_workers  # noqa: PLC0415  (loads inductor: only a compiling run)

    pool = getattr(AsyncCompile, "pool", None)
    if pool is not None and hasattr(pool, "cache_info") and pool.cache_info().currsize:
        pool().shutdown()
        pool.cache_clear()
    shutdown_compile_workers()


def _dry_run(cfg: Config, layout) -> dict:
    """trainer.dry_run: the planner's prediction for this layout on this machine; no process group."""
    try:
        cluster = Cluster.this_machine(layout.world_size, cfg.precision.dtype, cfg.logging.peak_tflops)
        prediction = plan(cfg, cluster, layout, planning_vocab(cfg))
    except ConfigError as err:
        raise on_every_rank(err) from None
    if int(os.environ.get("RANK", "0")) == 0:
        print(report(prediction, cfg), flush=True)
    return {"dry_run": True, "fits": prediction.fits}


def _finish(cfg: Config, run_dir: Path, ranks: Ranks, trainer: Trainer, built: Assembled, log) -> dict:
    """Final evaluation, memory report, text sample and summary.json."""
    t, layout, state, meter = cfg.trainer, ranks.layout, trainer.state, trainer.meter
    memory = [None] * layout.world_size
    torch.distributed.all_gather_object(memory, round(peak_memory_gb(), 4))
    summary = {
        "step": state.step,
        "interrupted": trainer.interrupted,
        "val_loss": trainer.last_val,
        "val_ppl": None if trainer.last_val is None else float(torch.tensor(trainer.last_val).exp()),
        "peak_mem_gb_per_rank": memory,
        "mfu_peak_tflops": meter.peak.tflops,
        "mfu_peak_source": meter.peak.source,
    }
    if trainer.interrupted:
        root = trainer.checkpointer.root
        if ranks.is_main:
            stopped = {"step": state.step, "checkpoints": str(root), "time": time.time()}
            (run_dir / STOPPED_FILE).write_text(json.dumps(stopped))
        torch.distributed.barrier()
        log(
            f"stopped by a signal after step {state.step}; the checkpoint is saved in {root}: "
            f"relaunch the same command (run.name={cfg.run.name}) to continue"
        )
        return summary
    if t.eval_full_split_at_end:
        summary["val_loss_full_split"] = trainer.evaluate(trainer.full_split_batches())
    if t.sample_tokens > 0:
        summary["sample"] = _sample(cfg, trainer.engine, ranks, built)
    if ranks.is_main:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        if summary["val_loss"] is not None:
            log(
                f"\nvalidation loss {summary['val_loss']:.4f}, perplexity {summary['val_ppl']:.2f} "
                f"after {state.step} steps"
            )
        log(f"MFU against {tflops_text(meter.peak.tflops)} TFLOP/s per device ({meter.peak.source})")
        if "sample" in summary:
            log("sample:\n" + "-" * 60 + "\n" + summary["sample"] + "\n" + "-" * 60)
    return summary


def _sample(cfg: Config, engine, ranks: Ranks, built: Assembled) -> str:
    """The end-of-run sample, in any layout: every rank takes part and all draw the same tokens."""
    t, tokenizer = cfg.trainer, built.tokenizer
    if ranks.layout.pipeline > 1:
        next_logits = pipeline_logits(engine.module, ranks, built.tp, cfg.model.d_model, built.vocab)
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
