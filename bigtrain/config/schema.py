"""The typed configuration: one frozen dataclass per component.

Hydra composes YAML from `conf/`; `from_dict` turns the composed tree into these dataclasses,
rejecting unknown keys, wrong types and values outside their allowed set with one `ConfigError`
that names the key, the value and the fix. Cross-field rules live in `validate.py`.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union


class ConfigError(ValueError):
    """A user mistake in the configuration. The message is one line naming key, value and fix."""


@dataclass(frozen=True)
class MoEConfig:
    """Mixture of experts (`model.moe`): routed MLPs in place of the dense one. experts=0: dense."""

    experts: int = 0  # routed experts per MoE layer; 0 keeps every MLP dense
    top_k: int = 2  # experts per token (1: Switch, 2: Mixtral)
    ffn_hidden: Optional[int] = None  # one expert's hidden size; None: the dense MLP's (model.ffn_hidden)
    shared_experts: int = 0  # experts every token also goes through (DeepSeek), each ffn_hidden wide
    every: int = 1  # layers every, 2·every, ... are MoE (1: all, 2: every other one, as Switch and GShard)
    # None: dropless; else an expert takes at most ceil(capacity_factor · tokens · top_k / experts)
    # of a micro-batch's assignments, first choices first, and the rest pass by on the residual
    capacity_factor: Optional[float] = None
    aux_loss_coef: float = 0.01  # load balancing (Switch): experts · Σ_e fraction_e · mean router probability_e
    z_loss_coef: float = 0.001  # router z-loss (ST-MoE): mean logsumexp(router logits)²

    def is_moe_layer(self, index: int) -> bool:
        """Whether block `index` (0-based) has routed experts."""
        return self.experts > 0 and (index + 1) % self.every == 0


@dataclass(frozen=True)
class ModelConfig:
    name: str = "tiny"
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: Optional[int] = None  # None: multi-head attention (= n_heads)
    d_model: int = 256
    ffn_hidden: Optional[int] = None  # None: 4*d (gelu) or 8/3*d rounded up to 64 (swiglu)
    seq_len: int = 128
    position: Literal["learned", "sinusoidal", "rope"] = "learned"
    rope_theta: float = 10000.0
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    norm_eps: float = 1e-5
    activation: Literal["gelu", "swiglu"] = "gelu"
    bias: bool = True
    tie_embeddings: bool = True
    dropout: float = 0.0
    init_std: float = 0.02
    vocab_size: Optional[int] = None  # None: taken from the tokenizer
    pad_vocab_multiple: int = 64  # padded vocab is a multiple of this × tensor_parallel
    init_from: Optional[str] = None  # a Hugging Face folder to start from
    moe: MoEConfig = field(default_factory=MoEConfig)

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def ffn_dim(self) -> int:
        if self.ffn_hidden:
            return self.ffn_hidden
        if self.activation == "swiglu":
            return -(-int(8 * self.d_model / 3) // 64) * 64
        return 4 * self.d_model

    @property
    def expert_ffn_dim(self) -> int:
        return self.moe.ffn_hidden or self.ffn_dim


@dataclass(frozen=True)
class DataConfig:
    name: str = "stdlib"
    # stdlib and text are tokenized here and cached; prepared reads bigtrain-prepare's (or
    # Megatron-LM's, GPT-NeoX's) .bin/.idx prefixes named in `blend`.
    source: Literal["stdlib", "text", "prepared"] = "stdlib"
    path: Optional[str] = None  # the text file for source=text
    # source=prepared: Megatron-LM's --data-path form, [weight, prefix, weight, prefix, ...], or
    # prefixes alone (weighted by their token counts). A prefix is the path without .bin/.idx.
    blend: tuple[Union[float, str], ...] = ()
    # Validation prefixes, in the same form; empty: hold out val_fraction of each blend prefix's
    # sequences (documents, or sentences in Megatron-LM's sentence-split prefixes; its --split).
    valid_blend: tuple[Union[float, str], ...] = ()
    # source=prepared: the tokenizer the prefixes were prepared with; None: the one bigtrain-prepare
    # wrote beside the first prefix (<prefix>.tokenizer.model or .tokenizer.json).
    tokenizer_path: Optional[str] = None
    tokenizer: Literal["bpe", "unigram", "char"] = "bpe"
    vocab_size: int = 4096  # sentencepiece vocabulary (ignored for char)
    val_fraction: float = 0.1  # stdlib/text: the last fraction of the text; prepared: of sequences
    max_bytes: Optional[int] = 8_000_000  # cap on corpus size (the stdlib is ~30 MB); None: all of it
    cache_dir: Optional[str] = None  # None: $BIGTRAIN_CACHE or ~/.cache/bigtrain
    append_eod: bool = True  # end every document with the EOD token
    # Cut a text file into documents at this separator (kept with the text). GPTDataset shuffles
    # documents each epoch, so shorter documents give new sample windows every epoch.
    document_separator: Optional[str] = None


@dataclass(frozen=True)
class TokenizerConfig:
    """Which tokenizer `bigtrain-prepare` uses: train a sentencepiece model (bpe, unigram, char) on
    a sample of the inputs, or reuse one: a sentencepiece .model or a Hugging Face tokenizer.json."""

    kind: Literal["bpe", "unigram", "char", "sentencepiece", "hf"] = "bpe"
    path: Optional[str] = None  # the existing .model or tokenizer.json (kind=sentencepiece|hf)
    vocab_size: int = 32000  # trained tokenizers (ignored for char)
    sample_bytes: int = 100_000_000  # trained tokenizers learn from the first this-many bytes
    eod_token: Optional[str] = None  # hf: the end-of-document token; None: <|endoftext|>, </s>, ...


@dataclass(frozen=True)
class PrepareConfig:
    """`bigtrain-prepare`: raw files → tokenizer → megatron-core `<output>.bin/.idx`."""

    inputs: tuple[str, ...] = ()  # files, folders and globs: .txt (any text), .jsonl[.gz], .parquet
    output: Optional[str] = None  # prefix: writes <output>.bin, .idx, .summary.json and the tokenizer
    text_key: str = "text"  # the JSON key / parquet column holding a document's text
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    workers: int = 1  # tokenizing processes; the output is the same for any number
    dedupe: bool = False  # drop exact duplicate documents (by hash)
    min_chars: int = 0  # drop documents shorter than this
    append_eod: bool = True  # end every document with the EOD token
    max_doc_chars: int = 1_000_000  # a text document without blank lines is cut here (bounded memory)
    batch_docs: int = 256  # documents per tokenizing task
    progress_bar: bool = True


@dataclass(frozen=True)
class ParallelConfig:
    zero_stage: int = 0
    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    sequence_parallel: bool = False
    # Split layers into stages balancing parameter counts, or transformer blocks per stage.
    pipeline_partition: Literal["parameters", "layers"] = "parameters"
    # How long a collective waits for a rank that stopped answering (NCCL's own default is 10
    # minutes, gloo's 30). A rank that dies breaks its connections and fails the others at once.
    collective_timeout_s: int = 600


@dataclass(frozen=True)
class PrecisionConfig:
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    # fp16 dynamic loss scaling: scale starts at 2**initial_scale_power, grows every window
    # overflow-free steps, and shrinks after `hysteresis` overflows, never below min_loss_scale.
    initial_scale_power: int = 16
    loss_scale_window: int = 1000
    hysteresis: int = 2
    min_loss_scale: float = 1.0
    fp32_grad_accum: bool = True  # accumulate bf16 gradients in fp32 where DeepSpeed allows


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 6e-4
    min_lr: float = 6e-5
    warmup_steps: int = 20
    decay_steps: Optional[int] = None  # None: trainer.max_steps
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    # torch AdamW's implementation. auto: fused (one kernel over all tensors; on CPU ~6x faster
    # than for_loop at 10M parameters); the three differ only in rounding (under 1% of a step).
    implementation: Literal["auto", "fused", "foreach", "for_loop"] = "auto"


@dataclass(frozen=True)
class TrainerConfig:
    max_steps: int = 200
    micro_batch_size: int = 8
    global_batch_size: int = 16
    eval_interval: int = 100
    eval_iters: int = 10  # global batches per evaluation (always the same ones)
    eval_full_split_at_end: bool = False  # also evaluate the whole validation split at the end
    log_interval: int = 1
    save_interval: int = 1000  # also at the end and on SIGTERM/SIGUSR1; 0: only then
    save_at_end: bool = True  # false: no checkpoint after the last step (benchmarks); signals still save
    keep_last: int = 2
    seed: int = 1234
    activation_checkpointing: Literal["none", "full"] = "none"
    sample_tokens: int = 200
    sample_prompt: str = ""
    sample_temperature: float = 0.8
    sample_top_k: int = 50
    ckpt_dir: Optional[str] = None  # None: <run dir>/checkpoints
    # A NaN/Inf loss or gradient norm: skip that update (stop after max_skipped_steps in a row),
    # or stop at once; both stop with the pre-update weights in <checkpoints>/diagnostic/.
    on_nonfinite: Literal["skip", "stop"] = "skip"
    max_skipped_steps: int = 5
    # A loss more than spike_zscore robust deviations above the median of the last spike_window
    # losses is logged as an event (metrics.jsonl "event": "loss_spike", wandb train/loss_spike).
    spike_window: int = 100
    spike_zscore: float = 6.0
    # Print the planner's memory and step-time prediction for this layout (launch/plan.py's) and
    # exit before any process group starts.
    dry_run: bool = False
    # torch.compile each transformer block (regional: one compilation serves every block, so
    # compile time does not grow with depth). Single tensor/pipeline rank, ZeRO 0-2, no activation
    # checkpointing; refused elsewhere with the reason. Loss: the same to ~1e-5 (kernel rounding).
    compile: bool = False
    # What trainer.compile compiles. block: each transformer block (above). model: the whole
    # model (embedding, blocks, final norm, head) as one graph, which also fuses the work between
    # blocks (the shakespeare preset: ~1.1x the block scope's speed) but compiles for longer as
    # depth grows. Same conditions and loss as block.
    compile_scope: Literal["block", "model"] = "block"
    # Intra-op threads per rank; None: OMP_NUM_THREADS if set, else this node's cores shared
    # equally among its ranks. pin_cores: bind each rank to its own cores (CPU runs).
    threads: Optional[int] = None
    pin_cores: bool = False


@dataclass(frozen=True)
class LoggingConfig:
    progress_bar: bool = True
    jsonl: bool = True
    tensorboard: bool = True
    wandb: bool = False
    # auto: online when wandb finds a key (WANDB_API_KEY or `wandb login`), else offline
    wandb_mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    wandb_project: str = "bigtrain"
    wandb_entity: Optional[str] = None
    wandb_group: Optional[str] = None
    wandb_name: Optional[str] = None  # None: run.name
    wandb_tags: tuple[str, ...] = ()  # added to the automatic ones: model, layout, precision
    peak_tflops: Optional[float] = None  # None: GPU datasheet table, or measured once on CPU
    comm_time: bool = False  # time inside collectives per step: comm_time, comm_share (gloo only)
    verbose: bool = False  # the libraries' INFO lines (DeepSpeed, megatron-core) and other ranks' warnings


@dataclass(frozen=True)
class RunConfig:
    """The run's identity across restarts: its directory is <root>/<name>, and relaunching the same
    name resumes from its latest complete checkpoint."""

    name: str = "tiny-stdlib"  # presets: the sbatch job name, else <model.name>-<data.name>
    root: str = "outputs"
    fresh: bool = False  # start over under an existing name; the old files move to replaced-<time>/


@dataclass(frozen=True)
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


def from_dict(raw: dict, cls: type = Config, prefix: str = "") -> Any:
    """Build `cls` from a plain (nested) dict, checking keys, types and allowed values."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            fix = f"did you mean '{prefix}{close[0]}'?" if close else f"allowed keys: {', '.join(names)}"
            raise ConfigError(f"unknown config key '{prefix}{key}' (value {value!r}): {fix}")
        kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}")
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(value, hint, key + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for option in inner[:-1]:  # the first type the value fits, e.g. a blend weight or a prefix
            try:
                return _coerce(value, option, key)
            except ConfigError:
                pass
        return _coerce(value, inner[-1], key)
    if origin is Literal:
        if value not in args:
            allowed = "|".join(str(a) for a in args)
            raise ConfigError(f"{key}={value!r} is not allowed: use one of {allowed}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} must be true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}={value!r} must be an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}={value!r} must be a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r} must be a string")
        return value
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        if isinstance(value, str):
            value = [value]  # one input may be given without brackets
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r} must be a list: {key}=[a,b]")
        return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    raise TypeError(f"unsupported schema type {hint} for {key}")  # a bug in the schema, not user input
