"""Predict a layout's memory per rank and its step time before a job is submitted.

Memory per rank is the sum of:

* **model states**: the rank's parameters (its tensor-parallel shard of its pipeline stage's
  layers) times the bytes each needs, by ZeRO stage and precision, in DeepSpeed's accounting
  (`estimate_zero2_model_states_mem_needs` / `..._zero3_...`): 16-bit weights 2, 16-bit gradients
  2, fp32 gradients 4, fp32 master weights 4, Adam's two moments 8. ZeRO-1 shards the last three
  over the data-parallel ranks, ZeRO-2 the gradients too, ZeRO-3 everything, plus the largest
  layer gathered whole. In fp32 the weights and gradients are 4 bytes and DeepSpeed's ZeRO-1/2
  still keeps an fp32 partition of the weights for the optimizer (4/dp).
* **DeepSpeed's buffers** (`runtime_bytes`, measured in fp32 on CPU ranks): the ZeRO optimizers
  reduce gradients through a bucket of up to `reduce_bucket_size` elements (5e8 by default,
  filled up to the rank's parameters), which under ZeRO-1 holds the gradients themselves and
  under ZeRO-2/3 comes on top of the partitioned ones; ZeRO-1 copies its partition's gradients
  once more; Adam's step flattens the partition's gradient into one more fp32 buffer (two with
  torch's unfused kernel, `optim.implementation`); ZeRO-3 keeps gathered parameters live while
  they are reused within `stage3_max_reuse_distance` (1e9 elements by default, so a model below
  a billion parameters stays gathered), plus one fresh partition-sized gradient per reduction.
* **activations** per micro-batch and layer, with flash attention (no T×T scores kept): the block
  input, norm outputs, q/k/v, attention output and the MLP's intermediates, divided by the
  tensor-parallel size where they are sharded; with full activation checkpointing only the block
  input plus one layer's working set. A pipeline's first stage holds min(pp, accumulation)
  micro-batches in flight (1F1B). The logits and their fp32 loss copy come on top on the last
  stage.
* **fixed overhead**: what a rank holds before the model (the runtime, CUDA context and NCCL
  buffers on a GPU; Python, torch, DeepSpeed and megatron-core on a CPU).

Step time comes from FLOPs and communication volumes: compute is the training FLOPs (a second
forward under checkpointing) over `peak_tflops × efficiency`, stretched by the pipeline bubble;
tensor parallelism all-reduces each layer's activations 4 times per micro-batch over the
intra-node link; data parallelism reduces the gradients (and ZeRO-3 gathers the weights twice)
over the slowest link the group spans. Nothing overlaps in this model, so it errs slow.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from bigtrain.config.blend import parse_blend
from bigtrain.config.schema import Config, ConfigError, ModelConfig
from bigtrain.config.validate import Layout, validate
from bigtrain.model.flops import parameter_count, train_flops_per_token

GB = 1e9
CPU_OVERHEAD_GB = 0.45  # a CPU rank's resident set before the model: Python, torch, DeepSpeed, megatron-core
# (measured with the tiny model on 1-2 ranks under MALLOC_MMAP_THRESHOLD_=1048576, benchmarks/plan_memory.py)
REDUCE_BUCKET_ELEMENTS = int(5e8)  # DeepSpeed's default reduce_bucket_size (bigtrain keeps it)
MAX_REUSE_ELEMENTS = int(1e9)  # DeepSpeed's default stage3_max_reuse_distance


@dataclass(frozen=True)
class Cluster:
    """The machines a plan is for. The defaults describe one 8-GPU H100 SXM node."""

    nodes: int = 1
    gpus_per_node: int = 8
    gpu_memory_gb: float = 80.0
    peak_tflops: float = 989.0  # dense bf16 per GPU (H100 SXM); fp32 runs use peak_tflops / 2 unless set
    efficiency: float = 0.55  # the fraction of peak a well-shaped matmul-bound step reaches
    intra_node_gbps: float = 450.0  # GB/s per GPU inside a node (NVLink, one direction)
    inter_node_gbps: float = 50.0  # GB/s per GPU across nodes (400 Gb/s InfiniBand per GPU)
    overhead_gb: float = 2.0  # per rank before the model: CUDA context, NCCL buffers, allocator slack

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node

    @classmethod
    def this_machine(cls, world_size: int, dtype: str, peak_override: float | None = None) -> Cluster:
        """The machine this process runs on, for `trainer.dry_run`: its GPU's memory and datasheet
        peak, or on a CPU the host's memory split over the local ranks and the measured peak."""
        import torch  # noqa: PLC0415  (the planner itself needs no torch)

        from bigtrain.metrics.peak import peak_tflops  # noqa: PLC0415

        local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        peak = peak_tflops(dtype, peak_override).tflops or cls.peak_tflops
        if torch.cuda.is_available():
            memory = torch.cuda.get_device_properties(0).total_memory / GB
            overhead = cls.overhead_gb
        else:
            memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GB / local
            overhead = CPU_OVERHEAD_GB
        return cls(
            nodes=max(1, world_size // local),
            gpus_per_node=min(local, world_size),
            gpu_memory_gb=memory,
            peak_tflops=peak * (2.0 if dtype == "fp32" else 1.0),  # step_time halves it for fp32
            overhead_gb=overhead,
        )


@dataclass
class Plan:
    """One layout's prediction. Memory in bytes per rank (the busiest rank), times in seconds."""

    layout: Layout
    zero_stage: int
    memory: dict[str, float] = field(default_factory=dict)
    step: dict[str, float] = field(default_factory=dict)
    fits: bool = True
    reason: str = ""

    @property
    def total_bytes(self) -> float:
        return sum(self.memory.values())

    @property
    def step_seconds(self) -> float:
        return sum(self.step.values())

    def name(self) -> str:
        lay = self.layout
        return f"tp{lay.tensor} pp{lay.pipeline} dp{lay.data} zero{self.zero_stage}"


def _dtype_bytes(dtype: str) -> int:
    return 4 if dtype == "fp32" else 2


def stage_parameters(m: ModelConfig, vocab: int, tp: int, pp: int) -> tuple[int, int]:
    """(parameters on the busiest rank, the largest single module's parameters, which ZeRO-3
    gathers whole) for tensor-parallel size `tp` and `pp` pipeline stages (layers split evenly,
    the embedding on the first stage, the head or the tied embedding's copy on the last)."""
    total = parameter_count(m, vocab)
    embed = vocab * m.d_model + (m.seq_len * m.d_model if m.position == "learned" else 0)
    head = vocab * m.d_model
    layers = total - embed - (0 if m.tie_embeddings else head)
    per_layer = layers / m.n_layers  # includes the final norm's share (tiny)
    if pp == 1:
        busiest = total
    else:
        per_stage = math.ceil(m.n_layers / pp) * per_layer
        busiest = max(embed + per_stage, head + per_stage)
    bias = 1 if m.bias else 0
    qkv = (m.d_model + bias) * (m.n_heads + 2 * m.kv_heads) * m.head_dim
    mlp = (m.d_model + bias) * max(m.ffn_dim, m.expert_ffn_dim * max(1, m.moe.shared_experts))
    largest = max(vocab * m.d_model, qkv, mlp)
    return int(busiest / tp), int(largest / tp)


def model_state_bytes(params: float, largest: float, dtype: str, zero: int, dp: int) -> dict[str, float]:
    """Weights, gradients and optimizer state per rank, DeepSpeed's accounting (module docstring)."""
    if dtype == "fp32":
        weights, grads = 4 * params, 4 * params
        if zero == 0:
            return {"weights": weights, "gradients": grads, "optimizer": 8 * params}
        opt = (4 + 8) * params / dp  # fp32 partition + Adam moments
        if zero == 1:
            return {"weights": weights, "gradients": grads, "optimizer": opt}
        if zero == 2:
            return {"weights": weights, "gradients": 4 * params / dp, "optimizer": opt}
        return {"weights": 4 * params / dp + 4 * largest, "gradients": 4 * params / dp, "optimizer": opt}
    # mixed precision: 16-bit weights and gradients, fp32 gradients, master weights and moments
    if zero <= 1:  # stage 0 runs as stage 1 (bigtrain's DeepSpeed config), sharding over dp
        return {"weights": 2 * params, "gradients": 2 * params, "optimizer": 16 * params / dp}
    if zero == 2:
        return {"weights": 2 * params, "gradients": 0.0, "optimizer": 18 * params / dp}
    return {"weights": 4 * largest, "gradients": 0.0, "optimizer": 18 * params / dp}


def runtime_bytes(
    params: float, dtype: str, zero: int, dp: int, fused_adam: bool = True, pipeline: bool = False
) -> dict[str, float]:
    """What DeepSpeed's ZeRO optimizers hold beyond the model states, at their defaults.

    fp32, measured (live peaks on CPU ranks, benchmarks/plan_memory.py): the gradients are copied
    into the reduce bucket as backward produces them and the model's gradients become views of
    it, so under ZeRO-1 the bucket is the "gradients" term; ZeRO-1 then copies its partition's
    gradients into a contiguous buffer (`partition_gradients`, 4 bytes over params / dp), which
    a pipeline's reduction (`reduce_gradients(pipeline_parallel=True)`) hands to the step as it
    is. ZeRO-2 keeps only that partition (its "gradients" term), so its bucket
    (`reduce_bucket_size`, 5e8 elements, filled up to the rank's parameters) comes on top.
    Adam's step flattens the partition's gradient into one more fp32 buffer (`optimizer_step`),
    outside a pipeline; torch's unfused Adam adds a temporary of that size
    (`exp_avg_sq.sqrt() / bias_correction`). ZeRO-3 keeps the gathered parameters live while they
    are reused within `stage3_max_reuse_distance` (1e9 elements), reduces through its bucket, and
    each bucket's reduce-scatter makes a fresh partition-sized gradient before adding it to the
    partition's (`backward_peak`).

    Mixed precision: the bucket in 4 bytes per element and the step's temporaries, from
    DeepSpeed's accounting; not measured (this machine's CPUs run bf16 ~1000x slower)."""
    if zero == 0 and dtype == "fp32":
        return {}  # the plain path: torch AdamW per tensor, no buckets
    bucket = 4 * min(REDUCE_BUCKET_ELEMENTS, params)
    partition = 4 * params / dp
    step = partition if fused_adam else 2 * partition
    if dtype != "fp32":
        out = {"buckets": bucket, "optimizer_step": step}
        if zero == 3:
            out["gathered"] = _dtype_bytes(dtype) * min(MAX_REUSE_ELEMENTS, params)
            out["backward_peak"] = 2 * _dtype_bytes(dtype) * min(REDUCE_BUCKET_ELEMENTS, params)
        return out
    if pipeline:  # ZeRO-1 only (validate refuses 2 and 3 with stages)
        return {"optimizer_step": step}
    if zero == 1:
        return {"partition_gradients": partition, "optimizer_step": step}
    out = {"buckets": bucket, "optimizer_step": step}
    if zero == 3:
        out["gathered"] = 4 * min(MAX_REUSE_ELEMENTS, params)
        out["backward_peak"] = partition
    return out


def activation_bytes(cfg: Config, layout: Layout) -> dict[str, float]:
    """Activations kept for the backward pass on the busiest rank, per the module docstring."""
    m, t = cfg.model, cfg.trainer
    tp, pp = layout.tensor, layout.pipeline
    sp = cfg.parallel.sequence_parallel
    el = _dtype_bytes(cfg.precision.dtype)
    sbh = t.micro_batch_size * m.seq_len * m.d_model
    s_b = t.micro_batch_size * m.seq_len
    q, kv = m.n_heads * m.head_dim, m.kv_heads * m.head_dim
    mults = 4 if m.activation == "swiglu" else 2
    mlp = mults * m.ffn_dim
    if m.moe.experts:  # MoE layers (counted for every layer): per assignment the token's gathered
        # copy, the expert's intermediates and its weighted output; shared experts; fp32 router
        # logits and probabilities (an fp32 element is two of a 16-bit one's bytes)
        moe = m.moe
        per_token = (
            moe.top_k * (2 * m.d_model + mults * m.expert_ffn_dim) + mults * moe.shared_experts * m.expert_ffn_dim
        )
        mlp = max(mlp, per_token + 2 * moe.experts * 4 / _dtype_bytes(cfg.precision.dtype))
    # replicated across TP ranks unless sequence parallel: block input, two norm inputs and outputs
    replicated = 4 * sbh / (tp if sp else 1)
    sharded = s_b * (q + 2 * kv + q + mlp) / tp  # q, k, v, attention output, MLP intermediates
    per_layer = el * (replicated + sharded) + 4 * s_b * m.n_heads / tp  # + attention's fp32 log-sum-exp
    if m.dropout > 0:
        per_layer += 2 * sbh / (tp if sp else 1)  # two dropout masks, one byte each
    layers = math.ceil(m.n_layers / pp)
    in_flight = min(pp, layout.grad_accum) if pp > 1 else 1
    if t.activation_checkpointing == "full":
        kept = layers * in_flight * el * sbh / (tp if sp else 1) + per_layer
    else:
        kept = layers * in_flight * per_layer
    vocab = cfg.model.vocab_size or 0
    logits = s_b * vocab / tp * (el + 4 + 4)  # logits, the fp32 loss copy and its gradient
    return {"activations": kept, "logits": logits}


def plan(cfg: Config, cluster: Cluster, layout: Layout | None = None, vocab: int | None = None) -> Plan:
    """The prediction for `cfg`'s layout (or `layout`) on `cluster`."""
    layout = layout or validate(cfg, cluster.world_size)
    vocab = vocab or cfg.model.vocab_size
    if vocab is None:
        raise ConfigError("the planner needs a vocabulary size: pass model.vocab_size=<tokenizer size>")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=vocab))
    zero = cfg.parallel.zero_stage
    params, largest = stage_parameters(cfg.model, vocab, layout.tensor, layout.pipeline)
    result = Plan(layout, zero)
    result.memory.update(model_state_bytes(params, largest, cfg.precision.dtype, zero, layout.data))
    fused = cfg.optim.implementation in ("auto", "fused")
    result.memory.update(runtime_bytes(params, cfg.precision.dtype, zero, layout.data, fused, layout.pipeline > 1))
    result.memory.update(activation_bytes(cfg, layout))
    result.memory["fixed"] = cluster.overhead_gb * GB
    result.step.update(step_time(cfg, cluster, layout, params))
    limit = cluster.gpu_memory_gb * GB
    if result.total_bytes > limit:
        result.fits = False
        result.reason = f"needs {result.total_bytes / GB:.1f} GB per rank, more than {cluster.gpu_memory_gb:g} GB"
    return result


def step_time(cfg: Config, cluster: Cluster, layout: Layout, params: float) -> dict[str, float]:
    m, t = cfg.model, cfg.trainer
    tokens = t.global_batch_size * m.seq_len
    flops = train_flops_per_token(m, m.vocab_size) * tokens
    if t.activation_checkpointing == "full":
        flops *= 4 / 3  # one more forward
    peak = cluster.peak_tflops * 1e12 * (0.5 if cfg.precision.dtype == "fp32" else 1.0)
    compute = flops / (cluster.world_size * peak * cluster.efficiency)
    micro = layout.grad_accum
    bubble = (layout.pipeline - 1) / (micro + layout.pipeline - 1) if layout.pipeline > 1 else 0.0
    out = {"compute": compute / (1 - bubble) if bubble < 1 else float("inf")}
    el = _dtype_bytes(cfg.precision.dtype)
    tp = layout.tensor
    if tp > 1:
        volume = 2 * (tp - 1) / tp * t.micro_batch_size * m.seq_len * m.d_model * el
        per_rank_layers = math.ceil(m.n_layers / layout.pipeline)
        out["tensor_comm"] = 4 * per_rank_layers * micro * volume / (cluster.intra_node_gbps * GB)
    dp = layout.data
    if dp > 1:
        # the data-parallel group spans nodes once a node cannot hold it
        spans_nodes = tp * layout.pipeline * dp > cluster.gpus_per_node
        link = cluster.inter_node_gbps if spans_nodes else cluster.intra_node_gbps
        grads = 2 * (dp - 1) / dp * params * el
        if cfg.parallel.zero_stage == 3:
            grads *= 2  # the weights are gathered in the forward and again in the backward
        out["data_comm"] = grads / (link * GB)
    return out


def candidates(cfg: Config, cluster: Cluster, vocab: int | None = None) -> list[Plan]:
    """Every tensor × pipeline × ZeRO split of the cluster, fitting ones first (fastest first),
    then the others with the reason each fails."""
    world = cluster.world_size
    plans = []
    tps = [d for d in _divisors(cluster.gpus_per_node) if d <= 8]
    for tp, pp, zero in itertools.product(tps, _divisors(world), (0, 1, 2, 3)):
        if tp * pp > world or zero == 0 and cfg.precision.dtype != "fp32":
            continue  # mixed precision runs ZeRO 0 as 1 (bigtrain's DeepSpeed config)
        parallel = dataclasses.replace(cfg.parallel, tensor_parallel=tp, pipeline_parallel=pp, zero_stage=zero)
        trial = dataclasses.replace(cfg, parallel=parallel)
        try:
            layout = validate(trial, world)
        except ConfigError as err:
            dp = world // (tp * pp)
            stub = Layout(world, tp, pp, dp, 0)
            plans.append(Plan(stub, zero, fits=False, reason=str(err).split(":")[0]))
            continue
        plans.append(plan(trial, cluster, layout, vocab))
    plans.sort(key=lambda p: (not p.fits, p.step_seconds if p.fits else p.total_bytes))
    return plans


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def tokens_per_second(p: Plan, cfg: Config) -> float:
    return cfg.trainer.global_batch_size * cfg.model.seq_len / p.step_seconds if p.step_seconds else 0.0


def report(p: Plan, cfg: Config) -> str:
    """The plan of one layout, as `trainer.dry_run=true` and `launch/plan.py` print it."""
    lines = [f"plan for {p.name()} (grad accumulation {p.layout.grad_accum}), per rank:"]
    for key, value in p.memory.items():
        lines.append(f"  {key:12s} {value / GB:9.2f} GB")
    lines.append(f"  {'total':12s} {p.total_bytes / GB:9.2f} GB" + ("" if p.fits else f"  DOES NOT FIT: {p.reason}"))
    step = ", ".join(f"{k} {v:.3g} s" for k, v in p.step.items())
    lines.append(f"  step {p.step_seconds:.3g} s ({step}); {tokens_per_second(p, cfg):,.0f} tokens/s")
    return "\n".join(lines)


def planning_vocab(cfg: Config) -> int:
    """The vocabulary a plan assumes: model.vocab_size, else the prepared tokenizer's (from
    bigtrain-prepare's summary beside the first prefix), else data.vocab_size for the built-in
    corpora's trained tokenizers (256 for characters)."""
    if cfg.model.vocab_size:
        return cfg.model.vocab_size
    if cfg.data.source == "prepared" and cfg.data.blend:
        summary = Path(parse_blend(cfg.data.blend, "data.blend")[0].prefix + ".summary.json")
        if summary.is_file():
            return int(json.loads(summary.read_text())["tokenizer"]["vocab_size"])
        raise ConfigError(f"no {summary} to read the vocabulary from: pass model.vocab_size=<tokenizer size>")
    return 256 if cfg.data.tokenizer == "char" else cfg.data.vocab_size
