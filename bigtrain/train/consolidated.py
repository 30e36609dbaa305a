"""bigtrain's layout-independent checkpoint: full fp32 weights and Adam moments by canonical name.

Canonical names are those of the unpipelined `GPT` (`embed.word.weight`, `blocks.3.attn.qkv.weight`,
`final_norm.norm.weight`, `head.proj.weight`), with tensor-parallel shards concatenated along their
partition dimension and the vocabulary's padding rows removed. Each pipeline stage's first
tensor/data-parallel rank writes its layers to `model-ppNN.safetensors` (weights) and
`optim-ppNN.safetensors` (`exp_avg/<name>`, `exp_avg_sq/<name>`). Loading slices the full tensors
for whatever layout is running now and sets both the model weights and, under ZeRO or mixed
precision, DeepSpeed's fp32 master copies and optimizer state, so training continues as if the
layout had never changed.

The copy streams: every tensor's shape is known before any is gathered, so the writer puts the
safetensors header down first and then gathers, writes and frees one tensor at a time. A rank
holds at most one full tensor plus, under tensor parallelism, one reused buffer its shards are
gathered into, whatever the model's size; `SaveStats` counts those bytes as they are allocated and
freed. Loading reads one tensor at a time from the memory-mapped files (`TensorFiles`).
"""

from __future__ import annotations

import json
import math
import struct
import threading
import time
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import deepspeed
import torch
from deepspeed.utils import (
    safe_get_full_fp32_param,
    safe_get_full_optimizer_state,
    safe_set_full_fp32_param,
    safe_set_full_optimizer_state,
)
from safetensors import safe_open

from bigtrain.model.layers import Vocab
from bigtrain.parallel.state import Ranks, tensor_parallel_group

MOMENTS = ("exp_avg", "exp_avg_sq")
VOCAB_ROWS = ("embed.word.weight", "head.proj.weight")
BLOCK_BYTES = 16 << 20  # a tensor-parallel tensor is reassembled and written in blocks of this size


def canonical_name(name: str, n_layers: int) -> str:
    """A parameter name of GPT or of a DeepSpeed PipelineModule → the GPT name."""
    if name.startswith("tied_modules.embed."):
        return "embed." + name[len("tied_modules.embed.") :]
    head, _, rest = name.partition(".")
    if not head.isdigit():
        return name
    index = int(head)
    if index == 0:
        return "embed." + rest
    if index <= n_layers:
        return f"blocks.{index - 1}.{rest}"
    return ("final_norm." if index == n_layers + 1 else "head.") + rest


def local_params(module, n_layers: int) -> list[tuple[str, torch.nn.Parameter]]:
    return [(canonical_name(n, n_layers), p) for n, p in module.named_parameters()]


def _inner_optimizer(engine):
    opt = engine.optimizer
    while hasattr(opt, "optimizer"):  # ZeRO / BF16 / FP16 wrappers around the torch optimizer
        opt = opt.optimizer
    return opt


def adam_step(engine) -> int:
    for state in _inner_optimizer(engine).state.values():
        if "step" in state:
            return int(state["step"])
    return 0


def _full_fp32(p: torch.nn.Parameter) -> torch.Tensor:
    value = safe_get_full_fp32_param(p)  # ZeRO / mixed precision: the fp32 master copy
    return (p.detach() if value is None else value).float()


def _full_moment(engine, p, key: str) -> torch.Tensor:
    if hasattr(p, "ds_id") or hasattr(p, "_hp_mapping"):
        return safe_get_full_optimizer_state(p, key).float()
    state = _inner_optimizer(engine).state.get(p, {})
    return state[key].float() if key in state else torch.zeros(p.shape, device=p.device)


def _link_optimizer_state(engine) -> None:
    """Point DeepSpeed's per-parameter views at the optimizer's current state tensors.

    ZeRO-1/2 and the BF16 optimizer link them once, after their first step; a checkpoint load
    replaces the state tensors, so link again before reading or writing through the views.
    """
    opt = engine.optimizer
    if hasattr(opt, "_lazy_init_hp_params_optimizer_state") and _inner_optimizer(engine).state:
        opt._hp_optimizer_states_linked = False
        opt._lazy_init_hp_params_optimizer_state()


@dataclass
class SaveStats:
    """What one rank's consolidated save held and took. Bytes are counted as the save allocates
    tensors and released only when Python frees them (a weakref finalizer), so a tensor kept
    alive by mistake keeps counting."""

    held_bytes: int = 0
    peak_host_bytes: int = 0
    largest_tensor_bytes: int = 0
    written_bytes: int = 0
    seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def hold(self, tensor: torch.Tensor) -> torch.Tensor:
        size = tensor.numel() * tensor.element_size()
        with self._lock:
            self.held_bytes += size
            self.peak_host_bytes = max(self.peak_host_bytes, self.held_bytes)
        weakref.finalize(tensor, self._release, size)
        return tensor

    def _release(self, size: int) -> None:
        with self._lock:
            self.held_bytes -= size

    def as_dict(self) -> dict:
        keys = ("peak_host_bytes", "largest_tensor_bytes", "written_bytes")
        return {**{k: getattr(self, k) for k in keys}, "seconds": round(self.seconds, 3)}


class _StreamingFile:
    """A safetensors file written one tensor at a time: the header (names, fp32 shapes, offsets)
    first, then each tensor's bytes in header order."""

    def __init__(self, path: Path | None, entries: list[tuple[str, tuple[int, ...]]]):
        self.sizes = {name: 4 * math.prod(shape) for name, shape in entries}
        self.order = iter(entries)
        self.file = None
        if path is None:  # a rank that gathers but does not write
            return
        header, offset = {}, 0
        for name, shape in entries:
            header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + self.sizes[name]]}
            offset += self.sizes[name]
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
        self.file = open(path, "wb")  # noqa: SIM115 (closed by close())
        self.file.write(struct.pack("<Q", len(raw)) + raw)

    def write(self, name: str, blocks: Iterator[torch.Tensor], stats: SaveStats) -> None:
        expected, _ = next(self.order)
        if name != expected:
            raise RuntimeError(f"consolidated save wrote {name} where the header has {expected}")
        written = 0
        for block in blocks:
            if block._base is None:  # a copy (a view of the gathered tensor is already counted)
                stats.hold(block)
            if self.file is not None:
                self.file.write(memoryview(block.numpy()).cast("B"))
            written += block.numel() * 4
        if written != self.sizes[name]:
            raise RuntimeError(f"consolidated save: {name} has {written} bytes, its header {self.sizes[name]}")
        if self.file is not None:
            stats.written_bytes += written

    def close(self) -> None:
        if self.file is not None:
            self.file.flush()
            self.file.close()


def _full_shape(name: str, p, tp_size: int, vocab: Vocab) -> tuple[int, ...]:
    shape = list(getattr(p, "ds_shape", p.shape))
    if getattr(p, "tensor_model_parallel", False):
        shape[p.partition_dim] *= tp_size
    if name in VOCAB_ROWS:
        shape[0] = vocab.size
    return tuple(shape)


def _gathered(local: torch.Tensor, p, size: int, stats: SaveStats, workspace: torch.Tensor | None) -> torch.Tensor:
    """[tp, *local]: every tensor-parallel rank's shard of this tensor, on the host. Shards are
    gathered into `workspace`, one buffer the size of the largest gathered tensor that every
    gather reuses: gloo's worker threads release a collective's tensors a little after it
    returns, so a fresh buffer per tensor could briefly hold two tensors' bytes."""
    local = stats.hold(local.detach().float().cpu().contiguous())
    if not getattr(p, "tensor_model_parallel", False) or size == 1:
        return local.unsqueeze(0)
    out = workspace[: size * local.numel()].view(size, *local.shape)
    mine = out[torch.distributed.get_rank(group=tensor_parallel_group())]
    mine.copy_(local)
    del local  # the collective gets views of `workspace`: however long it keeps them, no extra bytes
    torch.distributed.all_gather(list(out.unbind(0)), mine, group=tensor_parallel_group())
    return out


def _workspace(params: list, tp_size: int, stats: SaveStats) -> torch.Tensor | None:
    """The host buffer every tensor-parallel gather reuses, as large as the largest gathered
    tensor; None when nothing is split."""
    split = [
        tp_size * math.prod(getattr(p, "ds_shape", p.shape))
        for p in params
        if getattr(p, "tensor_model_parallel", False)
    ]
    return stats.hold(torch.empty(max(split), dtype=torch.float32)) if tp_size > 1 and split else None


def _row_blocks(gathered: torch.Tensor, dim: int, rows: int) -> Iterator[torch.Tensor]:
    """The full tensor's first `rows` rows (shards joined along `dim`) as contiguous blocks of
    about BLOCK_BYTES, copying no more than one block at a time."""
    size, local = gathered.shape[0], gathered.shape[1:]
    if len(local) == 0:
        yield gathered.reshape(-1)[:rows].contiguous()
        return
    if dim == 0 or size == 1:
        full = gathered.reshape(size * local[0], *local[1:])[:rows]
        step = max(1, BLOCK_BYTES // max(1, full[0].numel() * 4))
        for start in range(0, rows, step):
            yield full[start : start + step].contiguous()
        return
    full_row = size * math.prod(local[1:])
    step = max(1, BLOCK_BYTES // max(1, full_row * 4))
    for start in range(0, rows, step):
        block = gathered[:, start : min(start + step, rows)].movedim(0, dim)
        yield block.reshape(block.shape[0], *local[1:dim], size * local[dim], *local[dim + 1 :])


def save(engine, out: Path, n_layers: int, ranks: Ranks, vocab: Vocab) -> SaveStats:
    """Collective over all ranks; the first tensor/data rank of each stage writes its files,
    streaming one tensor at a time (see the module docstring)."""
    start, stats = time.perf_counter(), SaveStats()
    out.mkdir(parents=True, exist_ok=True)
    _link_optimizer_state(engine)
    writer = ranks.tp == 0 and ranks.dp == 0
    tp_size = ranks.layout.tensor
    params = [
        (name, p)
        for name, p in local_params(engine.module, n_layers)
        if not (name.startswith("embed.") and not ranks.is_first_stage)  # the last stage's tied copy
    ]
    shapes = {name: _full_shape(name, p, tp_size, vocab) for name, p in params}
    stats.largest_tensor_bytes = 4 * max((math.prod(s) for s in shapes.values()), default=0)
    workspace = _workspace([p for _, p in params], tp_size, stats)
    weights = _StreamingFile(
        out / f"model-pp{ranks.pp:02d}.safetensors" if writer else None, [(n, shapes[n]) for n, _ in params]
    )
    moments = _StreamingFile(
        out / f"optim-pp{ranks.pp:02d}.safetensors" if writer else None,
        [(f"{k}/{n}", shapes[n]) for n, _ in params for k in MOMENTS],
    )
    try:
        for name, p in params:
            dim, rows = getattr(p, "partition_dim", 0), shapes[name][0] if shapes[name] else 1
            weights.write(name, _row_blocks(_gathered(_full_fp32(p), p, tp_size, stats, workspace), dim, rows), stats)
            for key in MOMENTS:
                blocks = _row_blocks(_gathered(_full_moment(engine, p, key), p, tp_size, stats, workspace), dim, rows)
                moments.write(f"{key}/{name}", blocks, stats)
    finally:
        weights.close()
        moments.close()
    stats.seconds = time.perf_counter() - start
    return stats


class TensorFiles(Mapping):
    """A consolidated checkpoint's tensors of one kind by canonical name, read one at a time from
    the memory-mapped safetensors files (safe loading: no pickle)."""

    def __init__(self, folder: Path, kind: str = "model"):
        self.files = {}
        for file in sorted(folder.glob(f"{kind}-pp*.safetensors")):
            with safe_open(str(file), framework="pt") as f:
                self.files.update(dict.fromkeys(f.keys(), file))
        self._open = {}

    def __getitem__(self, name: str) -> torch.Tensor:
        file = self.files[name]
        if file not in self._open:
            self._open[file] = safe_open(str(file), framework="pt")
        return self._open[file].get_tensor(name)

    def __contains__(self, name) -> bool:
        return name in self.files

    def __iter__(self):
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)


def read_tensors(folder: Path, kind: str = "model") -> TensorFiles:
    """All of a consolidated checkpoint's tensors of one kind, by canonical name, each read when
    asked for."""
    return TensorFiles(folder, kind)


def shard_for(full: torch.Tensor, name: str, p, padded_vocab: int, tp_rank: int = 0, tp_size: int = 1) -> torch.Tensor:
    """Full canonical tensor → this rank's piece of parameter `p` (padding rows are zero)."""
    if name in VOCAB_ROWS and full.shape[0] < padded_vocab:
        full = torch.cat([full, full.new_zeros(padded_vocab - full.shape[0], *full.shape[1:])])
    if getattr(p, "tensor_model_parallel", False):
        full = full.chunk(tp_size, dim=p.partition_dim)[tp_rank]
    shape = tuple(getattr(p, "ds_shape", p.shape))
    if tuple(full.shape) != shape:
        raise ValueError(f"{name}: checkpoint shard {tuple(full.shape)} does not fit parameter {shape}")
    return full.contiguous()


def load_weights_into_module(module, tensors: dict, n_layers: int) -> None:
    """A `GPT` outside DeepSpeed (sampling, evaluation, export checks), any tensor-parallel place."""
    tp = module.tp
    with torch.no_grad():
        for name, p in local_params(module, n_layers):
            p.copy_(shard_for(tensors[name], name, p, module.vocab.padded, tp.rank, tp.size).to(p.dtype))


def load(
    engine,
    folder: Path,
    n_layers: int,
    ranks: Ranks,
    vocab: Vocab,
    adam_step: int | None = None,
    tensors: dict | None = None,
) -> None:
    """Set this rank's weights from full canonical tensors and, given the saved Adam step count
    (`meta.json`'s `adam_step`), its Adam moments too."""
    optimizer = adam_step is not None
    weights = tensors if tensors is not None else read_tensors(folder, "model")
    place = dict(padded_vocab=vocab.padded, tp_rank=ranks.tp, tp_size=ranks.layout.tensor)
    inner = _inner_optimizer(engine)
    moments = {}
    if optimizer:
        moments = read_tensors(folder, "optim")
        _ensure_optimizer_state(engine)
    for name, p in local_params(engine.module, n_layers):
        if name not in weights:
            raise ValueError(f"{name} is missing from the checkpoint at {folder}")
        value = shard_for(weights[name], name, p, **place)
        _set_model_weight(p, value)
        zero = hasattr(p, "ds_id") or hasattr(p, "_hp_mapping")
        if zero:
            safe_set_full_fp32_param(p, value)
        if not optimizer:
            continue
        states = {k: shard_for(moments[f"{k}/{name}"], name, p, **place) for k in MOMENTS}
        if zero:
            for key, v in states.items():
                safe_set_full_optimizer_state(p, v, key)
        else:
            inner.state[p] = {"step": torch.tensor(float(adam_step)), **states}
    if optimizer:
        for state in inner.state.values():
            if "step" in state:
                state["step"] = torch.tensor(float(adam_step))


def _ensure_optimizer_state(engine) -> None:
    """torch's AdamW creates its state at the first step; create it now so there is somewhere to
    load the moments into (DeepSpeed keeps it on its flat fp32 partitions)."""
    inner = _inner_optimizer(engine)
    flat = [p for group in inner.param_groups for p in group["params"]]
    # ZeRO-3 hands its fp32 partitions to the optimizer only during step().
    flat += list(getattr(engine.optimizer, "fp32_partitioned_groups_flat", []))
    for p in flat:
        state = inner.state[p]
        if "exp_avg" not in state:
            state.update(step=torch.tensor(0.0), exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
    _link_optimizer_state(engine)


def _set_model_weight(p, value: torch.Tensor) -> None:
    with torch.no_grad():
        if hasattr(p, "ds_id"):  # ZeRO-3: gather, write, re-partition
            with deepspeed.zero.GatheredParameters([p], modifier_rank=0):
                p.data.copy_(value.to(p.dtype))
        else:
            p.data.copy_(value.to(p.dtype))


def restore_schedule(engine, meta: dict) -> None:
    """Put the LR schedule, step counters and fp16 loss scale where the saved run was."""
    schedule = engine.lr_scheduler
    schedule.last_epoch = meta["step"] - 1
    schedule.step()
    engine.global_steps = meta["step"]
    engine.global_samples = meta["consumed_samples"]
    if meta.get("loss_scale") and engine.fp16_enabled():
        engine.optimizer.loss_scale_config.cur_scale = meta["loss_scale"]
