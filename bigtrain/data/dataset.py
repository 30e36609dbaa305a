"""megatron-core `GPTDataset` sampling over the prepared splits, and each rank's share of it.

Global batch `s` is samples [s·G, (s+1)·G) of the shuffled train dataset (G = global batch size).
Micro-batch `m` of data-parallel rank `r` takes its `micro_batch_size` samples at offset
(m·dp + r)·micro_batch_size inside it. So the samples a step sees depend only on the step number,
never on the layout: parity across layouts and exact resume both follow from this.
"""

from __future__ import annotations

import types
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

from bigtrain.data.blend import DataPlan, epoch_samples
from bigtrain.data.corpus import DataError


@dataclass(frozen=True)
class Batch:
    tokens: torch.Tensor  # (B, T) int64
    labels: torch.Tensor  # (B, T) int64, tokens shifted left by one
    loss_mask: torch.Tensor  # (B, T) float32


def build_datasets(plan: DataPlan, seq_len: int, seed: int, train_samples: int):
    """Train and validation datasets of the plan: megatron-core `GPTDataset`s, blended by
    `BlendedDataset` when a split has several prefixes. Train has at least `train_samples` samples;
    validation is one pass over its prefixes (in proportion to their weights when weighted)."""

    # What GPTDataset reads of a tokenizer; pad -1 is megatron's own "never a token" id.
    tokenizer = types.SimpleNamespace(
        vocab_size=plan.tokenizer.vocab_size,
        eod=plan.tokenizer.eod,
        pad=-1,
        unique_identifiers={"class": type(plan.tokenizer).__name__, "path": str(plan.tokenizer.path)},
    )
    common = dict(
        random_seed=seed,
        sequence_length=seq_len,
        tokenizer=tokenizer,
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,  # attention is causal through SDPA's is_causal
        path_to_cache=str(plan.cache),
    )
    val_weighted = any(c.weight is not None for c in plan.val)
    val_samples = epoch_samples(plan.val, seq_len) if val_weighted else None
    if plan.split:
        blend = ([c.prefix for c in plan.train], _weights(plan.train))
        config = GPTDatasetConfig(blend=blend, split=plan.split, **common)
    else:
        per_split = [([c.prefix for c in comps], _weights(comps)) for comps in (plan.train, plan.val)]
        config = GPTDatasetConfig(blend_per_split=[*per_split, None], **common)
    train, val, _ = BlendedMegatronDatasetBuilder(
        GPTDataset,
        [train_samples, val_samples, 0],
        lambda: True,
        config,  # no test split
    ).build()
    return train, val


def _weights(components) -> list[float] | None:
    weights = [c.weight for c in components]
    return None if weights[0] is None else weights


class Batches:
    """The micro-batches one data-parallel rank sees, addressed by (step, micro-step)."""

    def __init__(
        self, dataset, global_batch: int, micro_batch: int, dp_size: int, dp_rank: int, vocab_size: int | None = None
    ):
        self.dataset, self.global_batch, self.micro_batch = dataset, global_batch, micro_batch
        self.dp_size, self.dp_rank, self.vocab_size = dp_size, dp_rank, vocab_size
        self.micro_steps = global_batch // (micro_batch * dp_size)

    def indices(self, step: int, micro: int) -> list[int]:
        """Dataset positions of this rank's micro-batch: a disjoint share of the step's samples."""
        start = step * self.global_batch + (micro * self.dp_size + self.dp_rank) * self.micro_batch
        return [(start + j) % len(self.dataset) for j in range(self.micro_batch)]

    def get(self, step: int, micro: int) -> Batch:
        samples = [self.dataset[i] for i in self.indices(step, micro)]
        batch = Batch(
            tokens=torch.stack([s["tokens"] for s in samples]).long(),
            labels=torch.stack([s["labels"] for s in samples]).long(),
            loss_mask=torch.stack([s["loss_mask"] for s in samples]).float(),
        )
        # Prefixes from other tools are checked on a sample of their tokens; this catches the rest
        # here instead of as an index error inside the embedding.
        largest = max(int(batch.tokens.max()), int(batch.labels.max()))
        if self.vocab_size is not None and largest >= self.vocab_size:
            raise DataError(
                f"token id {largest} at step {step} is outside the tokenizer's "
                f"{self.vocab_size} ids: the data was prepared with another tokenizer; pass that one "
                "(data.tokenizer_path)"
            )
        return batch

    def step_batches(self, step: int) -> list[Batch]:
        return [self.get(step, m) for m in range(self.micro_steps)]


class Prefetched:
    """`Batches` whose next step is built on a background thread while this step computes.

    Samples depend only on the step number, so building them early changes nothing but time
    (about 3% of a small model's step on CPU: megatron's `GPTDataset` is Python per sample).
    """

    def __init__(self, batches: Batches):
        self.batches = batches
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="bigtrain-data")
        self.pending: tuple[int, Future] | None = None

    def step_batches(self, step: int) -> list[Batch]:
        if self.pending is not None and self.pending[0] == step:
            batches = self.pending[1].result()
        else:
            batches = self.batches.step_batches(step)
        self.pending = (step + 1, self.pool.submit(self.batches.step_batches, step + 1))
        return batches

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
