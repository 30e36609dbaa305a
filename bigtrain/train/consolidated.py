"""bigtrain's layout-independent checkpoint: full fp32 weights and Adam moments by canonical name.

Canonical names are those of the unpipelined `GPT` (`embed.word.weight`, `blocks.3.attn.qkv.weight`,
`final_norm.norm.weight`, `head.proj.weight`), with tensor-parallel shards concatenated along their
partition dimension and the vocabulary's padding rows removed. Each pipeline stage's first
tensor/data-parallel rank writes its layers to `model-ppNN.safetensors` (weights) and
`optim-ppNN.safetensors` (`exp_avg/<name>`, `exp_avg_sq/<name>`). Loading slices the full tensors
for whatever layout is running now and sets both the model weights and, under ZeRO or mixed
precision, DeepSpeed's fp32 master copies and optimizer state, so training continues as if the
layout had never changed.
"""

from __future__ import annotations

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
from safetensors.torch import save_file

from bigtrain.model.layers import Vocab
from bigtrain.parallel.state import Ranks, tensor_parallel_group

MOMENTS = ("exp_avg", "exp_avg_sq")
VOCAB_ROWS = ("embed.word.weight", "head.proj.weight")


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


def _gather_tp(local: torch.Tensor, p, size: int) -> torch.Tensor:
    if not getattr(p, "tensor_model_parallel", False) or size == 1:
        return local
    parts = [torch.empty_like(local) for _ in range(size)]
    torch.distributed.all_gather(parts, local.contiguous(), group=tensor_parallel_group())
    return torch.cat(parts, dim=p.partition_dim)


def _link_optimizer_state(engine) -> None:
    """Point DeepSpeed's per-parameter views at the optimizer's current state tensors.

    ZeRO-1/2 and the BF16 optimizer link them once, after their first step; a checkpoint load
    replaces the state tensors, so link again before reading or writing through the views.
    """
    opt = engine.optimizer
    if hasattr(opt, "_lazy_init_hp_params_optimizer_state") and _inner_optimizer(engine).state:
        opt._hp_optimizer_states_linked = False
        opt._lazy_init_hp_params_optimizer_state()


def save(engine, out: Path, n_layers: int, ranks: Ranks, vocab: Vocab) -> None:
    """Collective over all ranks; the first tensor/data rank of each stage writes its files."""
    out.mkdir(parents=True, exist_ok=True)
    _link_optimizer_state(engine)
    writer = ranks.tp == 0 and ranks.dp == 0
    weights, moments = {}, {}
    for name, p in local_params(engine.module, n_layers):
        if name.startswith("embed.") and not ranks.is_first_stage:
            continue  # the last stage's copy of the tied embedding
        tensors = {"": _full_fp32(p), **{k: _full_moment(engine, p, k) for k in MOMENTS}}
        tensors = {k: _gather_tp(v, p, ranks.layout.tensor).cpu() for k, v in tensors.items()}  # on device
        if name in VOCAB_ROWS:
            tensors = {k: v[: vocab.size] for k, v in tensors.items()}
        weights[name] = tensors.pop("").contiguous()
        moments.update({f"{k}/{name}": v.contiguous() for k, v in tensors.items()})
    if writer:
        save_file(weights, str(out / f"model-pp{ranks.pp:02d}.safetensors"))
        save_file(moments, str(out / f"optim-pp{ranks.pp:02d}.safetensors"))


def read_tensors(folder: Path, kind: str = "model") -> dict[str, torch.Tensor]:
    """All of a consolidated checkpoint's tensors of one kind, by canonical name (safe loading)."""
    tensors = {}
    for file in sorted(folder.glob(f"{kind}-pp*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            tensors.update({k: f.get_tensor(k) for k in f.keys()})
    return tensors


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
