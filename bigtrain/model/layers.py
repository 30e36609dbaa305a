"""The model's building blocks, and the one place that decides which class implements a projection.

Every projection of the decoder comes from here, built on megatron-core's tensor-parallel layers.
With tensor_parallel=1 they are plain linear layers; with T > 1 the same code shards them:

    q, k, v, MLP up/gate  column-parallel (output features split; heads stay whole per rank)
    attention out, MLP down  row-parallel (input features split; output all-reduced, or
                          reduce-scattered along the sequence under sequence parallel)
    embedding, LM head    vocab-parallel

Under sequence parallel, the activations between blocks hold T/tp positions per rank. Norm weights
and row-parallel biases then see only part of the sequence, so their gradients are summed over
the tensor-parallel group (`tp_grad_sum`) before any optimizer sees them.

Nothing here reads process-group globals: a `TensorParallel` carries this rank's place (rank,
size, group), so a model builds and runs on one process with no process group at all
(`TensorParallel()`), and `bigtrain.parallel` hands in the group when there are several ranks.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F
from megatron.core import ModelParallelConfig, tensor_parallel
from torch import nn


@dataclass(frozen=True)
class TensorParallel:
    """This rank's place among the ranks that shard one model's layers.

    `group` is the tensor-parallel process group; None (the default) means one process, which
    needs no torch.distributed at all.
    """

    size: int = 1
    rank: int = 0
    sequence_parallel: bool = False
    group: object = None  # torch.distributed.ProcessGroup

    def __post_init__(self):
        if self.size > 1 and self.group is None:
            raise ValueError(f"tensor-parallel size {self.size} needs its process group: pass group=")
        if not 0 <= self.rank < self.size:
            raise ValueError(f"tensor-parallel rank {self.rank} is outside size {self.size}")

    @property
    def sequence_shards(self) -> int:
        """How many ranks split the positions between blocks (sequence parallel), else 1."""
        return self.size if self.sequence_parallel else 1

    @cached_property
    def megatron(self) -> ModelParallelConfig:
        return ModelParallelConfig(
            tensor_model_parallel_size=self.size,
            sequence_parallel=self.sequence_parallel,
            params_dtype=torch.float32,  # master weights; DeepSpeed casts for bf16/fp16
            # Initialize the full matrix on CPU and keep this rank's shard: the same seed gives
            # the same model at every tensor-parallel size, which parity tests rely on.
            use_cpu_initialization=True,
            gradient_accumulation_fusion=False,
        )

    def column(self, d_in: int, d_out: int, bias: bool, std: float) -> "ColumnLinear":
        return ColumnLinear(
            d_in, d_out, config=self.megatron, init_method=normal_init(std), bias=bias, tp_group=self.group
        )

    def row(self, d_in: int, d_out: int, bias: bool, std: float) -> "RowLinear":
        return RowLinear(
            d_in,
            d_out,
            config=self.megatron,
            init_method=normal_init(std),
            bias=bias,
            input_is_parallel=True,
            skip_bias_add=True,
            tp_group=self.group,
        )

    def embedding(self, vocab: int, d: int, std: float) -> "VocabEmbedding":
        return VocabEmbedding(vocab, d, init_method=normal_init(std), config=self.megatron, tp_group=self.group)

    def tied_head(self, d: int, vocab: int) -> "ColumnLinear":
        """An LM head that borrows the embedding's weight at call time."""
        return ColumnLinear(
            d,
            vocab,
            config=self.megatron,
            init_method=normal_init(0.0),
            bias=False,
            skip_weight_param_allocation=True,
            tp_group=self.group,
        )

    def norm(self, kind: str, d: int, eps: float, bias: bool) -> "Norm":
        return Norm(kind, d, eps, bias, self)

    def grad_sum(self, param: torch.Tensor) -> torch.Tensor:
        """Identity forward; the backward sums the gradient over this tensor-parallel group."""
        return _TPGradSum.apply(param, self.group)

    def scatter_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """(T, B, D) -> (T/tp, B, D): enter the sequence-parallel region."""
        return tensor_parallel.scatter_to_sequence_parallel_region(x, group=self.group)

    def gather_vocab(self, logits: torch.Tensor) -> torch.Tensor:
        """(..., V/tp) -> (..., V): all vocabulary logits on every rank (sampling, export checks)."""
        if self.size == 1:
            return logits
        return tensor_parallel.gather_from_tensor_model_parallel_region(logits, group=self.group)

    def cross_entropy(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-token loss from vocab-sharded logits; megatron's kernel works on them in place (it
        reduces over megatron's tensor-parallel group, which `bigtrain.parallel.state` sets up).
        With the whole vocabulary on one rank, torch's fused cross-entropy does the same, faster."""
        if self.size == 1:
            flat = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none")
            return flat.view(labels.shape)
        return tensor_parallel.vocab_parallel_cross_entropy(logits, labels)

    def sharded_dropout(self):
        """Dropout on activations that differ across tensor-parallel ranks draws from megatron's
        per-rank tracker stream (seeded by `bigtrain.parallel.state.seed_everything`); with one
        rank nothing is sharded and the default generator serves."""
        return tensor_parallel.get_cuda_rng_tracker().fork() if self.size > 1 else contextlib.nullcontext()

    def vocab_pad_mask(self, vocab: "Vocab") -> torch.Tensor:
        """True for this rank's vocabulary columns that are padding, never to be predicted."""
        local = vocab.padded // self.size
        return torch.arange(self.rank * local, (self.rank + 1) * local) >= vocab.size  # (V/tp,)


@dataclass(frozen=True)
class Vocab:
    """The vocabulary facts, computed once: `size` ids the model predicts (the tokenizer's, or
    model.vocab_size), `padded` rows of the embedding and head (size rounded up to a multiple of
    pad_vocab_multiple × tensor-parallel size, so each rank holds an equal, aligned slice)."""

    size: int
    padded: int

    @classmethod
    def of(cls, size: int, multiple: int, tp_size: int = 1) -> "Vocab":
        step = multiple * tp_size
        return cls(size, int(math.ceil(size / step) * step))


def normal_init(std: float):
    def init(tensor: torch.Tensor) -> torch.Tensor:
        return nn.init.normal_(tensor, mean=0.0, std=std)

    return init


class VocabEmbedding(tensor_parallel.VocabParallelEmbedding):
    """Vocab-parallel token embedding; with one rank, the same lookup without a process group
    (megatron's forward asks its group for the size even then)."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.num_embeddings_per_partition == self.num_embeddings:
            return F.embedding(tokens, self.weight)
        return super().forward(tokens)


class ColumnLinear(tensor_parallel.ColumnParallelLinear):
    """Column-parallel linear that returns only the output (bias already added).

    With one tensor-parallel rank there is nothing to communicate, and megatron's autograd
    function only adds overhead (~15% of a small model's step on CPU): use a plain GEMM on the
    same parameters.
    """

    def forward(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        if self.output_size_per_partition == self.output_size:
            return F.linear(x, self.weight if weight is None else weight, self.bias)
        return super().forward(x, weight=weight)[0]


class RowLinear(tensor_parallel.RowParallelLinear):
    """Row-parallel linear; the bias is added here so sequence parallel can sum its gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_size_per_partition == self.input_size:  # one rank: a plain GEMM, as above
            return F.linear(x, self.weight, self.bias)
        out, bias = super().forward(x)
        if bias is None:
            return out
        return out + (_TPGradSum.apply(bias, self.tp_group) if self.sequence_parallel else bias)


class _TPGradSum(torch.autograd.Function):
    """Identity forward; backward sums the gradient over the tensor-parallel group."""

    @staticmethod
    def forward(ctx, param: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        return param.view_as(param)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        torch.distributed.all_reduce(grad, group=ctx.group)
        return grad, None


class Norm(nn.Module):
    """LayerNorm or RMSNorm, replicated across tensor-parallel ranks."""

    def __init__(self, kind: str, d: int, eps: float, bias: bool, tp: TensorParallel = TensorParallel()):
        super().__init__()
        self.kind, self.eps, self.tp = kind, eps, tp
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d)) if bias and kind == "layernorm" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        if self.tp.sequence_parallel:
            weight = self.tp.grad_sum(weight)
            bias = self.tp.grad_sum(bias) if bias is not None else None
        if self.kind == "rmsnorm":
            return F.rms_norm(x, (x.shape[-1],), weight, self.eps)
        return F.layer_norm(x, (x.shape[-1],), weight, bias, self.eps)


def pad_positions(ids: torch.Tensor, shards: int) -> torch.Tensor:
    """(B, t) -> (B, t') with t' a multiple of `shards`, padded on the right: sequence parallel
    splits positions evenly, and causal attention leaves positions < t unchanged."""
    return F.pad(ids, (0, -ids.shape[1] % shards))


def checkpoint(fn, *args):
    """Activation checkpointing that restores megatron's RNG tracker on recompute."""
    return tensor_parallel.checkpoint(fn, False, *args)
