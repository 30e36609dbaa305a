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

from bigtrain.data.prepare import Prepared


@dataclass(frozen=True)
class Batch:
    tokens: torch.Tensor  # (B, T) int64
    labels: torch.Tensor  # (B, T) int64, tokens shifted left by one
    loss_mask: torch.Tensor  # (B, T) float32


def build_datasets(prepared: Prepared, seq_len: int, seed: int, train_samples: int, val_samples: int | None):
    """Train and validation `GPTDataset`s with at least the requested number of samples
    (None: exactly one epoch of the split)."""

    # What GPTDataset reads of a tokenizer; pad -1 is megatron's own "never a token" id.
    tokenizer = types.SimpleNamespace(
        vocab_size=prepared.meta["vocab_size"],
        eod=prepared.tokenizer.eod,
        pad=-1,
        unique_identifiers={"class": "bigtrain.sentencepiece", "root": str(prepared.root)},
    )
    config = GPTDatasetConfig(
        random_seed=seed,
        sequence_length=seq_len,
        blend_per_split=[([prepared.prefix("train")], None), ([prepared.prefix("val")], None), None],
        tokenizer=tokenizer,
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,  # attention is causal through SDPA's is_causal
        path_to_cache=str(prepared.root / "index-cache"),
    )
    train, val, _ = BlendedMegatronDatasetBuilder(
        GPTDataset, [train_samples, val_samples, None], lambda: True, config
    ).build()
    return train, val


class Batches:
    """The micro-batches one data-parallel rank sees, addressed by (step, micro-step)."""

    def __init__(self, dataset, global_batch: int, micro_batch: int, dp_size: int, dp_rank: int):
        self.dataset, self.global_batch, self.micro_batch = dataset, global_batch, micro_batch
        self.dp_size, self.dp_rank = dp_size, dp_rank
        self.micro_steps = global_batch // (micro_batch * dp_size)

    def get(self, step: int, micro: int) -> Batch:
        start = step * self.global_batch + (micro * self.dp_size + self.dp_rank) * self.micro_batch
        samples = [self.dataset[(start + j) % len(self.dataset)] for j in range(self.micro_batch)]
        return Batch(
            tokens=torch.stack([s["tokens"] for s in samples]).long(),
            labels=torch.stack([s["labels"] for s in samples]).long(),
            loss_mask=torch.stack([s["loss_mask"] for s in samples]).float(),
        )

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
