"""The planner (bigtrain/parallel/plan.py): its parameter counts against the model it plans for, its
model-state memory against DeepSpeed's own estimators, and its list of layouts."""

import dataclasses

import pytest
from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

from bigtrain.config.hydra import compose
from bigtrain.model.gpt import GPT
from bigtrain.model.layers import TensorParallel, Vocab
from bigtrain.parallel.plan import Cluster, candidates, model_state_bytes, plan, stage_parameters

SIZES = {  # preset -> vocabulary (GPT-2's tokenizer padded to 64, Llama's)
    "gpt2_124m": 50304,
    "gpt2_350m": 50304,
    "gpt2_1_3b": 50304,
    "llama_1b": 32000,
    "llama_7b": 32000,
}


@pytest.mark.parametrize("preset", ["tiny", "tiny_llama"])
def test_parameter_counts_match_the_live_module(preset):
    cfg = compose([f"model={preset}"]).model
    model = GPT(cfg, TensorParallel(), Vocab(1000, 1000))
    total = sum(p.numel() for p in model.parameters())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    assert stage_parameters(cfg, 1000, tp=1, pp=1) == (total, largest)


@pytest.mark.parametrize("preset", list(SIZES))
@pytest.mark.parametrize("nodes", [1, 4, 32])
def test_model_states_within_10_percent_of_deepspeeds_estimators(preset, nodes):
    cfg = compose([f"model={preset}"]).model
    params, largest = stage_parameters(cfg, SIZES[preset], tp=1, pp=1)
    world = 8 * nodes
    ours2 = sum(model_state_bytes(params, largest, "bf16", 2, world).values())
    _, theirs2 = estimate_zero2_model_states_mem_needs(params, 8, nodes, cpu_offload=False)
    ours3 = sum(model_state_bytes(params, largest, "bf16", 3, world).values())
    _, theirs3, _ = estimate_zero3_model_states_mem_needs(params, largest, 8, nodes, cpu_offload=False)
    assert abs(ours2 / theirs2 - 1) <= 0.10, (ours2, theirs2)
    assert abs(ours3 / theirs3 - 1) <= 0.10, (ours3, theirs3)


def test_zero_stages_shrink_model_states_in_order():
    params, largest = 1e9, 5e7
    for dtype in ("fp32", "bf16"):
        totals = [sum(model_state_bytes(params, largest, dtype, z, 8).values()) for z in (1, 2, 3)]
        assert totals == sorted(totals, reverse=True) and totals[0] > totals[2] * 2, (dtype, totals)
    assert sum(model_state_bytes(params, largest, "fp32", 0, 8).values()) == 16 * params


def test_candidates_rank_fitting_layouts_and_explain_the_rest():
    cfg = compose(["model=llama_7b", "precision=bf16", "trainer.micro_batch_size=1", "trainer.global_batch_size=64"])
    cluster = Cluster(nodes=2, gpus_per_node=8, gpu_memory_gb=24)
    plans = candidates(cfg, cluster, 32000)
    fitting = [p for p in plans if p.fits]
    assert fitting and len(fitting) < len(plans)
    assert [p.step_seconds for p in fitting] == sorted(p.step_seconds for p in fitting)
    assert all(p.reason for p in plans if not p.fits)
    reasons = {p.reason for p in plans if not p.fits}
    assert any("more than 24 GB" in r for r in reasons) and any("cannot combine with pipeline" in r for r in reasons)
    assert all(p.layout.tensor <= 8 and p.layout.world_size == 16 for p in plans)
    assert all(p.zero_stage > 0 for p in plans)  # bf16 runs ZeRO 0 as 1: listed once


def test_checkpointing_and_tensor_parallel_lower_activation_memory():
    base = compose(["model=gpt2_350m", "trainer.micro_batch_size=8", "trainer.global_batch_size=64"])
    cluster = Cluster(nodes=1, gpus_per_node=8, gpu_memory_gb=80)
    full = plan(base, cluster, vocab=50304).memory["activations"]
    ckpt = dataclasses.replace(base, trainer=dataclasses.replace(base.trainer, activation_checkpointing="full"))
    assert plan(ckpt, cluster, vocab=50304).memory["activations"] < full / 5
    tp = dataclasses.replace(base, parallel=dataclasses.replace(base.parallel, tensor_parallel=2))
    assert plan(tp, cluster, vocab=50304).memory["activations"] < full * 0.8
