"""Checkpoints that never lose a run.

A checkpoint `step_XXXXXXXX/` holds three things:
  * DeepSpeed's native files (model, optimizer, LR schedule, fp16 loss scaler): a relaunch with
    the same layout resumes from them bit for bit;
  * `rng/rank<R>.pt`: every rank's Python, numpy, torch and megatron-tracker RNG states
    (tensors only, loaded with `weights_only=True`);
  * `bigtrain/`: a layout-independent copy (`consolidated.py`): full, unsharded fp32 weights and
    Adam moments in safetensors, per pipeline stage, plus `meta.json` (step, consumed samples,
    model config, layout) and the tokenizer. Resuming under a different layout, exporting to
    Hugging Face and sampling read this copy.

Writes are atomic: everything goes to `step_XXXXXXXX.partial/`, which rank 0 renames once all
ranks are done, then it points `latest` at it (write to a temporary file, then rename). A crash
mid-write leaves only a `.partial` folder, which resume ignores and the next save removes.

`bigtrain/manifest.json` records every file's size and SHA-256 at save time (the ranks hash
shares of the files in parallel). Resume checks them the same way and falls back to the previous
complete checkpoint when one is truncated or corrupted, saying so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import torch
from megatron.core import tensor_parallel

from bigtrain.config.schema import Config, ModelConfig, MoEConfig, from_dict
from bigtrain.data.files import sha256_file
from bigtrain.data.tokenizer import Tokenizer, load_tokenizer
from bigtrain.model.gpt import GPT
from bigtrain.model.layers import Vocab
from bigtrain.parallel.engine import loss_scale
from bigtrain.parallel.state import Ranks
from bigtrain.train import consolidated
from bigtrain.train.callbacks import Callbacks

PARTIAL = ".partial"
MANIFEST = "manifest.json"
# model.moe's settings that change the weights (top_k, capacity and loss coefficients may change)
MOE_IDENTITY = ("experts", "ffn_hidden", "shared_experts", "every")
# Model settings that change the weights' shapes or meaning; the rest (name, dropout) may differ.
MODEL_IDENTITY = (
    "n_layers",
    "n_heads",
    "n_kv_heads",
    "d_model",
    "ffn_hidden",
    "position",
    "norm",
    "activation",
    "bias",
    "tie_embeddings",
    "seq_len",
    "rope_theta",
)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as asked; the message names the difference and the fix."""


def tag(step: int) -> str:
    return f"step_{step:08d}"


def complete_checkpoints(root: Path) -> list[Path]:
    """Finished checkpoints, oldest first (a folder counts once its meta.json is written)."""
    if not root.is_dir():
        return []
    return sorted(
        p for p in root.glob("step_*") if not p.name.endswith(PARTIAL) and (p / "bigtrain" / "meta.json").is_file()
    )


def latest_checkpoint(root: Path) -> Path | None:
    pointer = root / "latest"
    if pointer.is_file():
        candidate = root / pointer.read_text().strip()
        if (candidate / "bigtrain" / "meta.json").is_file():
            return candidate
    found = complete_checkpoints(root)
    return found[-1] if found else None


def resolve(path: str | Path) -> Path:
    """A run directory, a checkpoints folder or one checkpoint → that checkpoint, checked against
    its manifest (tools: export, generate)."""
    path = Path(path)
    found = path if (path / "bigtrain" / "meta.json").is_file() else None
    for root in (path, path / "checkpoints"):
        found = found or latest_checkpoint(root)
    if found:
        problem = damage(found)
        if problem:
            older = [c for c in complete_checkpoints(found.parent) if c < found]
            hint = f"pass the previous one, {older[-1]}" if older else "restore it from a copy"
            raise CheckpointError(f"checkpoint {found} is damaged: {problem}: {hint}")
        return found
    raise CheckpointError(
        f"no complete bigtrain checkpoint under {path}: pass a run directory, its "
        "checkpoints/ folder or a checkpoints/step_XXXXXXXX folder"
    )


def read_meta(ckpt: Path) -> dict:
    return json.loads((ckpt / "bigtrain" / "meta.json").read_text())


def checkpoint_files(ckpt: Path) -> list[str]:
    """The files the manifest covers: all of them but the manifest and meta.json (written last)."""
    skip = {f"bigtrain/{MANIFEST}", "bigtrain/meta.json"}
    names = (p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*") if p.is_file())
    return sorted(n for n in names if n not in skip)


def hash_share(ckpt: Path, names: list[str], rank: int, world: int) -> dict:
    """This rank's share of the files: {name: [size, sha256]}."""
    return {n: [(ckpt / n).stat().st_size, sha256_file(ckpt / n)] for n in names[rank::world]}


def damage(ckpt: Path, rank: int = 0, world: int = 1) -> str | None:
    """The first problem in this rank's share of `ckpt`'s files against its manifest (a missing
    file, a size, a hash), or None. Checkpoints saved before manifests existed pass."""
    path = ckpt / "bigtrain" / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except ValueError:
        return f"{path} is not valid JSON"
    for name in sorted(manifest)[rank::world]:
        size, digest = manifest[name]
        file = ckpt / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} has {file.stat().st_size:,} bytes, {size:,} when saved (truncated?)"
        if sha256_file(file) != digest:
            return f"{name} does not match the SHA-256 recorded when it was saved (corrupted)"
    return None


def _broadcast(value, ranks: Ranks):
    """Rank 0's value on every rank."""
    box = [value]
    if ranks.layout.world_size > 1:
        torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _gather(value, ranks: Ranks) -> list:
    if ranks.layout.world_size == 1:
        return [value]
    out = [None] * ranks.layout.world_size
    torch.distributed.all_gather_object(out, value)
    return out


def check_model_matches(saved: dict, wanted: ModelConfig, where: Path) -> None:
    wanted_dict = dataclasses.asdict(wanted)
    diffs = [
        f"model.{k}: checkpoint {saved.get(k)!r}, requested {wanted_dict[k]!r}"
        for k in MODEL_IDENTITY
        if saved.get(k) != wanted_dict[k]
    ]
    saved_moe = {**dataclasses.asdict(MoEConfig()), **(saved.get("moe") or {})}  # a dense run saved none
    diffs += [
        f"model.moe.{k}: checkpoint {saved_moe[k]!r}, requested {wanted_dict['moe'][k]!r}"
        for k in MOE_IDENTITY
        if saved_moe[k] != wanted_dict["moe"][k]
    ]
    if diffs:
        raise CheckpointError(
            f"the checkpoint {where} holds a different model ({'; '.join(diffs)}): "
            "request the same model settings, or use another run directory / trainer.ckpt_dir"
        )


class Checkpointer:
    """Saves, resumes and prunes one run's checkpoints. It takes the whole `Config` because a
    checkpoint records the run: `meta.json` holds the model, data, layout and precision."""

    def __init__(self, cfg: Config, root: Path, ranks: Ranks, vocab: Vocab, tokenizer, callbacks: Callbacks):
        t = cfg.trainer
        self.cfg, self.root, self.ranks = cfg, Path(root), ranks
        self.interval, self.keep_last, self.max_steps = t.save_interval, t.keep_last, t.max_steps
        self.at_end = t.save_at_end
        self.vocab, self.tokenizer = vocab, tokenizer
        self.callbacks = callbacks  # save_written and before_publish
        self.stop_requested = False
        self.saving = False  # inside save(): what a rank that loses a peer reports

    # ---- cadence and signals -------------------------------------------------------------

    def due(self, step: int) -> bool:
        return (step == self.max_steps and self.at_end) or (self.interval > 0 and step % self.interval == 0)

    @contextlib.contextmanager
    def stop_on_signals(self):
        """While inside: SIGTERM (Slurm preemption, time limit) and SIGUSR1 ask for a checkpoint and
        a clean exit. The handlers the process had come back afterwards."""

        def handler(signum, frame):
            self.stop_requested = True

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGUSR1)}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    def should_stop(self) -> bool:
        """True on every rank once any rank was signalled (one tiny all-reduce per step)."""
        if self.ranks.layout.world_size == 1:
            return self.stop_requested
        flag = torch.tensor([1.0 if self.stop_requested else 0.0], device=self.ranks.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    # ---- saving --------------------------------------------------------------------------

    def save(self, engine, state, diagnostic: bool = False) -> Path:
        """Save step `state.step`; `diagnostic`: into <checkpoints>/diagnostic/, which resume never
        reads (the weights a run stopped with, for inspection)."""
        self.saving = True
        final = self._save(engine, state, self.root / "diagnostic" if diagnostic else self.root)
        self.saving = False
        return final

    def _save(self, engine, state, root: Path) -> Path:
        final, staging = root / tag(state.step), root / (tag(state.step) + PARTIAL)
        started = time.perf_counter()
        rng = _capture_rng()  # saving may draw random numbers (DeepSpeed's pipeline does)
        # A PipelineModule reseeds every layer's forward from its count of micro-batches seen.
        rng["pipe_micro_offset"] = getattr(engine.module, "micro_offset", 0)
        if self.ranks.is_main:
            shutil.rmtree(staging, ignore_errors=True)
            for stale in root.glob(f"step_*{PARTIAL}"):  # left by a crash mid-write
                shutil.rmtree(stale, ignore_errors=True)
        torch.distributed.barrier()
        engine.save_checkpoint(
            str(root), tag=staging.name, save_latest=False, client_state={"bigtrain": dataclasses.asdict(state)}
        )
        self.callbacks.save_written(state.step)
        (staging / "rng").mkdir(parents=True, exist_ok=True)
        torch.save(rng, staging / "rng" / f"rank{self.ranks.rank}.pt")
        _restore_rng(rng)  # so a run that saves trains exactly like one that does not
        stats = consolidated.save(engine, staging / "bigtrain", self.cfg.model.n_layers, self.ranks, self.vocab)
        if self.ranks.is_main:
            shutil.copy(self.tokenizer.path, staging / "bigtrain" / self.tokenizer.saved_name)
        torch.distributed.barrier()
        names = checkpoint_files(staging) if self.ranks.is_main else None
        names = _broadcast(names, self.ranks)
        share = hash_share(staging, names, self.ranks.rank, self.ranks.layout.world_size)
        shares, per_rank = zip(*_gather((share, stats.as_dict()), self.ranks), strict=True)
        self.callbacks.before_publish(state.step)
        if self.ranks.is_main:
            manifest = {name: entry for share in shares for name, entry in share.items()}
            (staging / "bigtrain" / MANIFEST).write_text(json.dumps(manifest, indent=0, sort_keys=True))
            meta = {
                "step": state.step,
                "consumed_samples": state.consumed_samples,
                "vocab_size": self.vocab.size,
                "model": dataclasses.asdict(self.cfg.model),
                "data": dataclasses.asdict(self.cfg.data),
                "tokenizer": {
                    "file": self.tokenizer.saved_name,
                    "eod_token": self.tokenizer.eod_token,
                    "vocab_size": self.tokenizer.vocab_size,
                },
                "layout": dataclasses.asdict(self.ranks.layout),
                "zero_stage": self.cfg.parallel.zero_stage,
                "precision": self.cfg.precision.dtype,
                "adam_step": consolidated.adam_step(engine),
                "loss_scale": _loss_scale_or_none(engine),
                # the whole save's wall time until now, and the consolidated copy's per rank
                "save_seconds": round(time.perf_counter() - started, 3),
                "consolidated_save": {"per_rank": list(per_rank)},
            }
            (staging / "bigtrain" / "meta.json").write_text(json.dumps(meta, indent=1))
            if final.exists():
                shutil.rmtree(final)
            staging.rename(final)
            pointer = root / "latest.tmp"
            pointer.write_text(final.name)
            pointer.replace(root / "latest")
            self._prune(root)
        torch.distributed.barrier()
        return final

    def _prune(self, root: Path) -> None:
        for old in complete_checkpoints(root)[: -self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)

    # ---- resuming ------------------------------------------------------------------------

    def _check_tokenizer(self, meta: dict, ckpt: Path) -> None:
        """The run's tokenizer must be the one the checkpoint was trained with."""
        saved = meta.get("tokenizer")
        if not saved:
            return
        file = ckpt / "bigtrain" / saved["file"]
        same = saved["vocab_size"] == self.tokenizer.vocab_size and (
            not file.is_file() or sha256_file(file) == sha256_file(Path(self.tokenizer.path))
        )
        if not same:
            raise CheckpointError(
                f"the checkpoint {ckpt} was trained with another tokenizer ({saved['vocab_size']} ids, saved as "
                f"{file}) than this run's ({self.tokenizer.vocab_size} ids, {self.tokenizer.path}): resume with "
                "the data and tokenizer it was trained with, or use another run.name"
            )

    def intact_latest(self, log) -> Path | None:
        """The newest complete checkpoint whose files match their manifest on every rank's share;
        a damaged one is reported and the previous one taken. The same answer on every rank."""
        candidates = complete_checkpoints(self.root)
        latest = latest_checkpoint(self.root)
        if latest in candidates:  # the pointer names the newest published one
            candidates = candidates[: candidates.index(latest) + 1]
        damaged = []
        for ckpt in reversed(candidates):
            problems = _gather(damage(ckpt, self.ranks.rank, self.ranks.layout.world_size), self.ranks)
            problem = next((p for p in problems if p), None)
            if problem is None:
                if damaged:
                    log(f"checkpoint {damaged[-1]} is damaged: falling back to the previous one, {ckpt}")
                return ckpt
            log(f"checkpoint {ckpt} is damaged: {problem}")
            damaged.append(ckpt)
        if damaged:
            raise CheckpointError(
                f"every checkpoint under {self.root} is damaged (newest: {damaged[0].name}): restore them from a "
                "copy, or pass run.fresh=true to start over (the damaged ones are kept aside)"
            )
        return None

    def resume(self, engine, log) -> dict | None:
        """Load the latest intact checkpoint, if any; returns its meta (step, samples)."""
        ckpt = self.intact_latest(log)
        if ckpt is None:
            return None
        meta = read_meta(ckpt)
        check_model_matches(meta["model"], self.cfg.model, ckpt)
        self._check_tokenizer(meta, ckpt)
        same_layout = (
            meta["layout"] == dataclasses.asdict(self.ranks.layout)
            and meta["zero_stage"] == self.cfg.parallel.zero_stage
            and meta["precision"] == self.cfg.precision.dtype
        )
        if same_layout:
            engine.load_checkpoint(
                str(self.root), tag=ckpt.name, load_optimizer_states=True, load_lr_scheduler_states=True
            )
            rng = _load_rng(ckpt / "rng" / f"rank{self.ranks.rank}.pt")
            if rng and hasattr(engine.module, "micro_offset"):
                engine.module.micro_offset = rng["pipe_micro_offset"]
            how = "exactly (same layout)"
        else:
            consolidated.load(
                engine, ckpt / "bigtrain", self.cfg.model.n_layers, self.ranks, self.vocab, adam_step=meta["adam_step"]
            )
            consolidated.restore_schedule(engine, meta)
            how = (
                f"resharded from tensor {meta['layout']['tensor']} × pipeline {meta['layout']['pipeline']} × "
                f"data {meta['layout']['data']} (ZeRO {meta['zero_stage']}, {meta['precision']})"
            )
        log(f"resuming from {ckpt} at step {meta['step']} ({meta['consumed_samples']} samples), {how}")
        return meta


def _loss_scale_or_none(engine) -> float | None:
    return loss_scale(engine.optimizer) if engine.fp16_enabled() else None


def _capture_rng() -> dict:
    """Every RNG stream of this rank, as tensors and numbers (loadable with weights_only)."""
    version, py_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states = {
        "python": torch.tensor(py_state, dtype=torch.int64),
        "python_version": version,
        "python_gauss": gauss,
        "numpy": torch.from_numpy(keys.astype(np.int64)),
        "numpy_pos": pos,
        "numpy_has_gauss": has_gauss,
        "numpy_cached": cached,
        "torch": torch.get_rng_state(),
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def _load_rng(path: Path) -> dict | None:
    if not path.is_file():  # absent when saved by fewer ranks: keep the freshly seeded streams
        return None
    states = torch.load(path, weights_only=True)
    _restore_rng(states)
    return states


def _restore_rng(s: dict) -> None:
    random.setstate((s["python_version"], tuple(s["python"].tolist()), s["python_gauss"]))
    np.random.set_state(
        ("MT19937", s["numpy"].numpy().astype(np.uint32), s["numpy_pos"], s["numpy_has_gauss"], s["numpy_cached"])
    )
    torch.set_rng_state(s["torch"])
    tensor_parallel.get_cuda_rng_tracker().set_states(s["tracker"])
    if torch.cuda.is_available() and "cuda" in s:
        torch.cuda.set_rng_state(s["cuda"])


# ---- reading a checkpoint on one process (bigtrain-export, bigtrain-generate) --------------


def checkpoint_tokenizer(ckpt: Path, meta: dict):
    """The tokenizer the run trained with, saved in its checkpoint (sentencepiece or tokenizer.json)."""
    saved = meta.get("tokenizer", {"file": Tokenizer.saved_name, "eod_token": None})
    return load_tokenizer(ckpt / "bigtrain" / saved["file"], saved["eod_token"])


def saved_model(meta: dict) -> ModelConfig:
    """The model config a checkpoint's meta.json recorded (checked and typed; a dense run's has no moe)."""
    return from_dict(meta["model"], ModelConfig, "model.")


def load_checkpoint_model(path: str | Path) -> tuple[GPT, object, dict]:
    """(GPT in eval mode on one process, tokenizer, meta) from a run dir or checkpoint."""
    ckpt = resolve(path)
    meta = read_meta(ckpt)
    cfg = saved_model(meta)
    model = GPT(cfg, vocab=Vocab.of(meta["vocab_size"], cfg.pad_vocab_multiple))
    consolidated.load_weights_into_module(model, consolidated.read_tensors(ckpt / "bigtrain"), cfg.n_layers)
    return model.eval(), checkpoint_tokenizer(ckpt, meta), meta
