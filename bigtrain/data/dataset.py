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

import numpy as np
import torch
from megatron.core.datasets.blended_dataset import BlendedDataset
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

from bigtrain.data.blend import DataPlan, epoch_samples
from bigtrain.data.corpus import DataError


@dataclass(frozen=True)
class Batch:
    """One micro-batch. `text` holds each sample's seq_len + 1 tokens once; tokens and labels are
    views into it (no copies), so it moves to a device in one transfer."""

    text: torch.Tensor  # (B, T + 1) int64
    loss_mask: torch.Tensor  # (B, T) float32

    @property
    def tokens(self) -> torch.Tensor:  # (B, T)
        return self.text[:, :-1]

    @property
    def labels(self) -> torch.Tensor:  # (B, T), tokens shifted left by one
        return self.text[:, 1:]

    def to(self, device: torch.device) -> Batch:
        """On `device`: from pinned host memory the copy does not block the host."""
        pinned = self.text.is_pinned()
        return Batch(self.text.to(device, non_blocking=pinned), self.loss_mask.to(device, non_blocking=pinned))


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
        self,
        dataset,
        global_batch: int,
        micro_batch: int,
        dp_size: int,
        dp_rank: int,
        vocab_size: int | None = None,
        pin: bool = False,
    ):
        self.dataset, self.global_batch, self.micro_batch = dataset, global_batch, micro_batch
        self.dp_size, self.dp_rank, self.vocab_size = dp_size, dp_rank, vocab_size
        self.micro_steps = global_batch // (micro_batch * dp_size)
        self.seq_len = _gpt_datasets(dataset)[0].config.sequence_length
        self.pin = pin  # page-locked host buffers, for asynchronous copies to a GPU

    def indices(self, step: int, micro: int) -> list[int]:
        """Dataset positions of this rank's micro-batch: a disjoint share of the step's samples."""
        start = step * self.global_batch + (micro * self.dp_size + self.dp_rank) * self.micro_batch
        return [(start + j) % len(self.dataset) for j in range(self.micro_batch)]

    def get(self, step: int, micro: int) -> Batch:
        indices = self.indices(step, micro)
        text = torch.empty((len(indices), self.seq_len + 1), dtype=torch.int64, pin_memory=self.pin)
        rows = text.numpy()
        for row, i in zip(rows, indices):
            row[:] = _sample_text(self.dataset, i)  # one copy: the memory-mapped tokens into the batch
        # megatron pads a short final sample with its pad id (-1): those labels do not count, and
        # the pad reads as token 0 (what GPTDataset.__getitem__ does, per sample)
        padded = rows == PAD
        loss_mask = torch.ones((len(indices), self.seq_len), dtype=torch.float32, pin_memory=self.pin)
        if padded.any():
            loss_mask.numpy()[padded[:, 1:]] = 0.0
            rows[padded] = 0
        # Prefixes from other tools are checked on a sample of their tokens; this catches the rest
        # here instead of as an index error inside the embedding.
        largest = int(rows.max())
        if self.vocab_size is not None and largest >= self.vocab_size:
            raise DataError(
                f"token id {largest} at step {step} is outside the tokenizer's "
                f"{self.vocab_size} ids: the data was prepared with another tokenizer; pass that one "
                "(data.tokenizer_path)"
            )
        return Batch(text, loss_mask)

    def step_batches(self, step: int) -> list[Batch]:
        return [self.get(step, m) for m in range(self.micro_steps)]


PAD = -1  # megatron's pad id as build_datasets configures it: never a token


def _gpt_datasets(dataset) -> list[GPTDataset]:
    return list(dataset.datasets) if isinstance(dataset, BlendedDataset) else [dataset]


def _sample_text(dataset, index: int) -> np.ndarray:
    """Sample `index`'s seq_len + 1 token ids (int64), straight from megatron's indices: what
    `GPTDataset.__getitem__` builds its tensors from, without the per-sample tensor work."""
    if isinstance(dataset, BlendedDataset):
        if dataset.dataset_index is None:
            _ = dataset[0]  # megatron memory-maps its indices on the first read
        index, dataset = int(dataset.dataset_sample_index[index]), dataset.datasets[int(dataset.dataset_index[index])]
    text, _ = dataset._query_document_sample_shuffle_indices(index)
    return text


class Prefetched:
    """`Batches` whose next step is built on a background thread while this step computes.

    Samples depend only on the step number, so building them early changes nothing but time
    (about 1% of the preset's step on CPU: megatron's indices are read per sample in Python).
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
