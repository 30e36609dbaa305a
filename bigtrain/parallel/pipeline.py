"""The decoder as DeepSpeed pipeline stages.

The stage list is the layer list `GPT` chains in one process: embedding, blocks, final norm and
head, seeded with the same per-layer seeds, so a pipelined model starts from exactly the weights
of the unpipelined one. With tied embeddings the last stage holds a copy of the token embedding
(without position embeddings) whose weight DeepSpeed keeps in sync with the first stage's.
"""
from __future__ import annotations

import torch
from deepspeed.pipe import LayerSpec, PipelineModule, TiedLayerSpec
from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology

from bigtrain.config.schema import Config
from bigtrain.model.gpt import Block, Embedding, FinalNorm, LMHead, lm_loss, seed_layer
from bigtrain.parallel import layers as tpl
from bigtrain.parallel.state import Ranks, pipeline_parallel_group, pipeline_peers

PARTITION = {"parameters": "parameters", "layers": "type:Block"}


def _tied_logits(embedding: Embedding, hidden):
    return embedding.logits(hidden)


def _loss(logits, labels_and_mask):
    labels, loss_mask = labels_and_mask
    return lm_loss(logits, labels, loss_mask)


def layer_specs(cfg: Config, tp: tpl.TensorParallel, vocab: int) -> list:
    m = cfg.model
    padded = tpl.padded_vocab(vocab, m.pad_vocab_multiple, tp.size)
    if m.tie_embeddings:
        first = TiedLayerSpec("embed", Embedding, m, tp, vocab, padded, tied_weight_attr="word.weight")
        last = TiedLayerSpec("embed", Embedding, m, tp, vocab, padded, positions=False,
                             forward_fn=_tied_logits, tied_weight_attr="word.weight")
    else:
        first, last = LayerSpec(Embedding, m, tp, vocab, padded), LayerSpec(LMHead, m, tp, vocab, padded)
    return [first, *(LayerSpec(Block, m, tp) for _ in range(m.n_layers)), LayerSpec(FinalNorm, m, tp), last]


def build_pipeline(cfg: Config, tp: tpl.TensorParallel, ranks: Ranks, vocab: int,
                   checkpoint_activations: bool) -> PipelineModule:
    layout = ranks.layout
    # Axes (pipe, data, model): tensor-parallel ranks vary fastest, as in megatron-core.
    topology = PipeModelDataParallelTopology(num_pp=layout.pipeline, num_mp=layout.tensor, num_dp=layout.data)
    return PipelineModule(
        layers=layer_specs(cfg, tp, vocab),
        loss_fn=_loss,
        topology=topology,
        partition_method=PARTITION[cfg.parallel.pipeline_partition],
        seed_layers=True, seed_fn=seed_layer, base_seed=cfg.trainer.seed,
        activation_checkpoint_interval=1 if checkpoint_activations else 0,
        activation_checkpoint_func=tpl.checkpoint,
        checkpointable_layers=["Block"],
    )


def pipeline_logits(module: PipelineModule, ranks: Ranks, cfg: Config, vocab: int, sequence_shards: int):
    """Next-token logits across pipeline stages, for `bigtrain.train.sample.generate`.

    ids (1, t) -> (1, V) on every rank: each stage runs its own layers on what the previous stage
    sends, the last stage gathers the vocabulary and broadcasts the logits along its pipeline.
    Under sequence parallel the context is padded on the right to a multiple of the TP size and
    stages exchange their (t'/tp, 1, D) slices; causal attention keeps position t-1 unchanged.
    """
    prev, nxt, last = pipeline_peers()
    padded_vocab = tpl.padded_vocab(vocab, cfg.model.pad_vocab_multiple, cfg.parallel.tensor_parallel)
    param = next(module.parameters())

    def next_logits(ids: torch.Tensor) -> torch.Tensor:
        t = ids.shape[1]
        padded = tpl.pad_positions(ids, sequence_shards)  # (1, t')
        if ranks.is_first_stage:
            x = module(padded)
        else:
            x = torch.empty(padded.shape[1] // sequence_shards, 1, cfg.model.d_model, dtype=param.dtype,
                            device=param.device)
            torch.distributed.recv(x, src=prev)  # (t'/shards, 1, D)
            x = module(x)
        if ranks.is_last_stage:
            logits = tpl.gather_vocab(x[t - 1].float()).contiguous()  # (1, V)
        else:
            torch.distributed.send(x.contiguous(), dst=nxt)
            logits = torch.empty(1, padded_vocab, device=param.device)
        torch.distributed.broadcast(logits, src=last, group=pipeline_parallel_group())
        return logits
    return next_logits
