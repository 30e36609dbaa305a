"""Which class implements each projection: the one place that decides.

Every projection of the decoder comes from here, built on megatron-core's tensor-parallel layers.
With tensor_parallel=1 they are plain linear layers; with T > 1 the same code shards them:

    q, k, v, MLP up/gate  column-parallel (output features split; heads stay whole per rank)
    attention out, MLP down  row-parallel (input features split; output all-reduced, or
                          reduce-scattered along the sequence under sequence parallel)
    embedding, LM head    vocab-parallel

Under sequence parallel, the activations between blocks hold T/tp positions per rank. Norm weights
and row-parallel biases then see only part of the sequence, so their gradients are summed over
the tensor-parallel group (`tp_grad_sum`) before any optimizer sees them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F
from megatron.core import ModelParallelConfig, tensor_parallel
from torch import nn

from bigtrain.parallel.state import tensor_parallel_group, tensor_parallel_rank_and_size


@dataclass(frozen=True)
class TensorParallel:
    size: int = 1
    sequence_parallel: bool = False
    pipeline_parallel: int = 1
    params_dtype: torch.dtype = torch.float32

    @property
    def sequence_shards(self) -> int:
        """How many ranks split the positions between blocks (sequence parallel), else 1."""
        return self.size if self.sequence_parallel else 1

    @cached_property
    def megatron(self) -> ModelParallelConfig:
        return ModelParallelConfig(
            tensor_model_parallel_size=self.size,
            pipeline_model_parallel_size=self.pipeline_parallel,
            sequence_parallel=self.sequence_parallel,
            params_dtype=self.params_dtype,
            pipeline_dtype=self.params_dtype,
            # Initialize the full matrix on CPU and keep this rank's shard: the same seed gives
            # the same model at every tensor-parallel size, which parity tests rely on.
            use_cpu_initialization=True,
            gradient_accumulation_fusion=False,
        )

    def column(self, d_in: int, d_out: int, bias: bool, std: float) -> "ColumnLinear":
        return ColumnLinear(d_in, d_out, config=self.megatron, init_method=normal_init(std), bias=bias)

    def row(self, d_in: int, d_out: int, bias: bool, std: float) -> "RowLinear":
        return RowLinear(d_in, d_out, config=self.megatron, init_method=normal_init(std), bias=bias,
                         input_is_parallel=True, skip_bias_add=True)

    def embedding(self, vocab: int, d: int, std: float) -> tensor_parallel.VocabParallelEmbedding:
        return tensor_parallel.VocabParallelEmbedding(vocab, d, init_method=normal_init(std),
                                                      config=self.megatron)

    def tied_head(self, d: int, vocab: int) -> "ColumnLinear":
        """An LM head that borrows the embedding's weight at call time."""
        return ColumnLinear(d, vocab, config=self.megatron, init_method=normal_init(0.0), bias=False,
                            skip_weight_param_allocation=True)


def normal_init(std: float):
    def init(tensor: torch.Tensor) -> torch.Tensor:
        return nn.init.normal_(tensor, mean=0.0, std=std)
    return init


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
        return out + (tp_grad_sum(bias) if self.sequence_parallel else bias)


class _TPGradSum(torch.autograd.Function):
    """Identity forward; backward sums the gradient over the tensor-parallel group."""

    @staticmethod
    def forward(ctx, param: torch.Tensor) -> torch.Tensor:
        return param.view_as(param)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        torch.distributed.all_reduce(grad, group=tensor_parallel_group())
        return grad


def tp_grad_sum(param: torch.Tensor) -> torch.Tensor:
    return _TPGradSum.apply(param)


class Norm(nn.Module):
    """LayerNorm or RMSNorm, replicated across tensor-parallel ranks."""

    def __init__(self, kind: str, d: int, eps: float, bias: bool, sequence_parallel: bool):
        super().__init__()
        self.kind, self.eps, self.sequence_parallel = kind, eps, sequence_parallel
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d)) if bias and kind == "layernorm" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        if self.sequence_parallel:
            weight = tp_grad_sum(weight)
            bias = tp_grad_sum(bias) if bias is not None else None
        if self.kind == "rmsnorm":
            return F.rms_norm(x, (x.shape[-1],), weight, self.eps)
        return F.layer_norm(x, (x.shape[-1],), weight, bias, self.eps)


tp_rank_and_size = tensor_parallel_rank_and_size


def scatter_sequence(x: torch.Tensor) -> torch.Tensor:
    """(T, B, D) -> (T/tp, B, D): enter the sequence-parallel region."""
    return tensor_parallel.scatter_to_sequence_parallel_region(x)


def pad_positions(ids: torch.Tensor, shards: int) -> torch.Tensor:
    """(B, t) -> (B, t') with t' a multiple of `shards`, padded on the right: sequence parallel
    splits positions evenly, and causal attention leaves positions < t unchanged."""
    return F.pad(ids, (0, -ids.shape[1] % shards))


def gather_vocab(logits: torch.Tensor) -> torch.Tensor:
    """(..., V/tp) -> (..., V): all vocabulary logits on every rank (sampling, export checks)."""
    return tensor_parallel.gather_from_tensor_model_parallel_region(logits)


def vocab_parallel_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token loss from vocab-sharded logits; megatron's kernel works on them in place.
    With the whole vocabulary on one rank, torch's fused cross-entropy does the same, faster."""
    if tensor_parallel_rank_and_size()[1] == 1:
        flat = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none")
        return flat.view(labels.shape)
    return tensor_parallel.vocab_parallel_cross_entropy(logits, labels)


def rng_fork():
    """Dropout on activations that differ across tensor-parallel ranks uses the tracker's stream."""
    return tensor_parallel.get_cuda_rng_tracker().fork()


def checkpoint(fn, *args):
    """Activation checkpointing that restores megatron's RNG tracker on recompute."""
    return tensor_parallel.checkpoint(fn, False, *args)


def padded_vocab(vocab: int, multiple: int, tp: int) -> int:
    step = multiple * tp
    return int(math.ceil(vocab / step) * step)
