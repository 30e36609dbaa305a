"""The decoder as DeepSpeed pipeline stages.

The stage list is the layer list `GPT` chains in one process: embedding, blocks, final norm and
head, seeded with the same per-layer seeds, so a pipelined model starts from exactly the weights
of the unpipelined one. With tied embeddings the last stage holds a copy of the token embedding
(without position embeddings) whose weight DeepSpeed keeps in sync with the first stage's.
"""

from __future__ import annotations

import functools

import torch
from deepspeed.pipe import LayerSpec, PipelineModule, TiedLayerSpec
from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology

from bigtrain.config.schema import ModelConfig
from bigtrain.model.gpt import Block, Embedding, FinalNorm, LMHead, seed_layer
from bigtrain.model.layers import TensorParallel, Vocab, checkpoint, pad_positions
from bigtrain.parallel.state import Ranks, pipeline_parallel_group, pipeline_peers

PARTITION = {"parameters": "parameters", "layers": "type:Block"}


def _tied_logits(embedding: Embedding, hidden):
    return embedding.logits(hidden)


def _loss(logits, labels_and_mask, loss_fn):
    labels, loss_mask = labels_and_mask
    return loss_fn(logits, labels, loss_mask)


def layer_specs(m: ModelConfig, tp: TensorParallel, vocab: Vocab) -> list:
    if m.tie_embeddings:
        first = TiedLayerSpec("embed", Embedding, m, tp, vocab, tied_weight_attr="word.weight")
        last = TiedLayerSpec(
            "embed", Embedding, m, tp, vocab, positions=False, forward_fn=_tied_logits, tied_weight_attr="word.weight"
        )
    else:
        first, last = LayerSpec(Embedding, m, tp, vocab), LayerSpec(LMHead, m, tp, vocab)
    return [first, *(LayerSpec(Block, m, tp, i) for i in range(m.n_layers)), LayerSpec(FinalNorm, m, tp), last]


def build_pipeline(
    model: ModelConfig,
    partition: str,
    tp: TensorParallel,
    ranks: Ranks,
    vocab: Vocab,
    seed: int,
    checkpoint_activations: bool,
    loss_fn,
) -> PipelineModule:
    """The stages of this rank's pipeline; the last computes `loss_fn` (logits, labels, loss mask),
    the run's one loss function (bigtrain/model/gpt.py's lm_loss with the step callbacks' hooks)."""
    layout = ranks.layout
    # Axes (pipe, data, model): tensor-parallel ranks vary fastest, as in megatron-core.
    topology = PipeModelDataParallelTopology(num_pp=layout.pipeline, num_mp=layout.tensor, num_dp=layout.data)
    return PipelineModule(
        layers=layer_specs(model, tp, vocab),
        loss_fn=functools.partial(_loss, loss_fn=loss_fn),
        topology=topology,
        partition_method=PARTITION[partition],
        seed_layers=True,
        seed_fn=seed_layer,
        base_seed=seed,
        activation_checkpoint_interval=1 if checkpoint_activations else 0,
        activation_checkpoint_func=checkpoint,
        checkpointable_layers=["Block"],
    )


def pipeline_logits(module: PipelineModule, ranks: Ranks, tp: TensorParallel, d_model: int, vocab: Vocab):
    """Next-token logits across pipeline stages, for `bigtrain.train.sample.generate`.

    ids (1, t) -> (1, V) on every rank: each stage runs its own layers on what the previous stage
    sends, the last stage gathers the vocabulary and broadcasts the logits along its pipeline.
    Under sequence parallel the context is padded on the right to a multiple of the TP size and
    stages exchange their (t'/tp, 1, D) slices; causal attention keeps position t-1 unchanged.
    """
    prev, nxt, last = pipeline_peers()
    sequence_shards = tp.sequence_shards
    param = next(module.parameters())

    def next_logits(ids: torch.Tensor) -> torch.Tensor:
        t = ids.shape[1]
        padded = pad_positions(ids, sequence_shards)  # (1, t')
        if ranks.is_first_stage:
            x = module(padded)
        else:
            x = torch.empty(padded.shape[1] // sequence_shards, 1, d_model, dtype=param.dtype, device=param.device)
            torch.distributed.recv(x, src=prev)  # (t'/shards, 1, D)
            x = module(x)
        if ranks.is_last_stage:
            logits = tp.gather_vocab(x[t - 1].float()).contiguous()  # (1, V)
        else:
            torch.distributed.send(x.contiguous(), dst=nxt)
            logits = torch.empty(1, vocab.padded, device=param.device)
        torch.distributed.broadcast(logits, src=last, group=pipeline_parallel_group())
        return logits

    return next_logits
