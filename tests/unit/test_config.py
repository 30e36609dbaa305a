"""The schema: every preset composes, and bad configs fail with one clear line."""

import dataclasses
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from bigtrain.config import Config, ConfigError, ModelConfig, ParallelConfig, TrainerConfig, validate
from bigtrain.config.deepspeed import deepspeed_config
from bigtrain.config.hydra import CONF_DIR, compose
from bigtrain.config.schema import from_dict

PRESETS = sorted((p.parent.name, p.stem) for p in Path(CONF_DIR).glob("*/*.yaml"))


def test_presets_exist():
    groups = {g for g, _ in PRESETS}
    assert {"model", "data", "parallel", "precision", "optim", "trainer", "logging", "experiment"} <= groups
    names = {n for _, n in PRESETS}
    assert {"tiny", "gpt2_124m", "gpt2_350m", "gpt2_1_3b", "llama_1b", "llama_7b"} <= names
    assert {"single", "zero1", "zero2", "zero3", "tp2", "tp2_sp", "pp2", "tp2_pp2", "3d"} <= names


def flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value  # YAML lists
    return out


def preset_values(group: str, name: str) -> dict:
    """What a preset file sets, after the presets of its own group that it builds on."""
    own = OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / group / f"{name}.yaml"))
    values = {}
    for parent in own.pop("defaults", []):
        if isinstance(parent, str) and parent != "_self_":  # `- single`: a preset of the same group
            values.update(preset_values(group, parent))
    return {**values, **own}


@pytest.mark.parametrize("group,name", PRESETS)
def test_every_preset_composes_to_its_own_values(group, name):
    """Selecting a preset gives a typed config carrying every value the preset's file sets."""
    overrides = {"data.path": "/corpus.txt"}
    cfg = compose([f"{group}={name}", *(f"{k}={v}" for k, v in overrides.items())])
    own = preset_values(group, name)
    is_global = (Path(CONF_DIR) / group / f"{name}.yaml").read_text().startswith("# @package _global_")
    composed = flatten(dataclasses.asdict(cfg) if is_global else {group: dataclasses.asdict(getattr(cfg, group))})
    expected = {k: v for k, v in flatten(own if is_global else {group: own}).items() if k not in overrides}
    assert expected, f"{group}/{name}.yaml sets nothing"
    assert {k: composed.get(k, "<missing>") for k in expected} == expected
    if group == "parallel":
        p = cfg.parallel
        world = p.tensor_parallel * p.pipeline_parallel * (2 if name == "3d" else 1)
        layout = validate(cfg, world_size=world)
        assert (layout.tensor, layout.pipeline, layout.world_size) == (p.tensor_parallel, p.pipeline_parallel, world)


def test_composing_no_overrides_gives_the_schema_defaults():
    """One source of defaults: the default presets say what the schema's dataclasses say."""
    composed, documented = dataclasses.asdict(compose([])), dataclasses.asdict(Config())
    differ = {
        f"{g}.{k}": (v, documented[g][k]) for g in composed for k, v in composed[g].items() if v != documented[g][k]
    }
    assert not differ, f"(composed, schema) disagree: {differ}"


def test_gpt2_and_llama_shapes():
    gpt2 = compose(["model=gpt2_124m"]).model
    assert (gpt2.n_layers, gpt2.n_heads, gpt2.d_model, gpt2.seq_len, gpt2.ffn_dim) == (12, 12, 768, 1024, 3072)
    llama = compose(["model=llama_7b"]).model
    assert (llama.position, llama.norm, llama.activation, llama.kv_heads) == ("rope", "rmsnorm", "swiglu", 8)


def test_shakespeare_recipe_matches_nanogpt():
    cfg = compose(["experiment=shakespeare_char_cpu", "data.path=/x.txt"])
    m, o, t = cfg.model, cfg.optim, cfg.trainer
    assert (m.n_layers, m.n_heads, m.d_model, m.seq_len, m.dropout) == (4, 4, 128, 64, 0.0)
    assert (m.position, m.norm, m.activation, m.bias, m.tie_embeddings) == ("rope", "layernorm", "gelu", False, True)
    assert (t.global_batch_size, t.max_steps) == (12, 2000)
    assert (o.lr, o.min_lr, o.warmup_steps, o.decay_steps, o.beta2, o.weight_decay, o.grad_clip) == (
        1e-3,
        1e-4,
        100,
        2000,
        0.99,
        0.1,
        1.0,
    )
    assert cfg.data.tokenizer == "char"


# Each bad config or override: one line naming the key, the value and the fix (≥ 30, issue 12).
BAD_CONFIGS = [
    (["+model.n_layer=3"], "unknown config key 'model.n_layer' (value 3): did you mean 'model.n_layers'?"),
    (["+trainer.max_step=3"], "unknown config key 'trainer.max_step' (value 3): did you mean 'trainer.max_steps'?"),
    (["model.position=alibi"], "model.position='alibi' is not allowed: use one of learned|sinusoidal|rope"),
    (["model.norm=batchnorm"], "model.norm='batchnorm' is not allowed: use one of"),
    (["model.n_layers=abc"], "model.n_layers='abc' must be an integer"),
    (["optim.lr=fast"], "optim.lr='fast' must be a number"),
    (["parallel.zero_stage=4"], "parallel.zero_stage=4 is not allowed"),
    (["precision.dtype=fp8"], "precision.dtype='fp8' is not allowed: use one of fp32|bf16|fp16"),
    (["trainer.max_steps=0"], "trainer.max_steps=0 must be positive: set trainer.max_steps=200 (the default)"),
    (["trainer.max_steps=-5"], "trainer.max_steps=-5 must be positive: set trainer.max_steps=200"),
    (["model.n_layers=0"], "model.n_layers=0 must be positive: set model.n_layers="),
    (["model.seq_len=0"], "model.seq_len=0 must be positive: set model.seq_len="),
    (["model.n_kv_heads=0"], "model.n_kv_heads=0 must be positive: leave model.n_kv_heads unset (null)"),
    (["model.vocab_size=-1"], "model.vocab_size=-1 must be positive: leave model.vocab_size unset (null)"),
    (["model.dropout=1.0"], "model.dropout=1.0 must be in [0, 1): set model.dropout="),
    (["model.d_model=100", "model.n_heads=3"], "model.d_model=100 is not divisible by model.n_heads=3: pick d_model"),
    (["model.n_heads=4", "model.n_kv_heads=3"], "model.n_heads=4 is not divisible by model.n_kv_heads=3: grouped"),
    (["model.position=rope", "model.d_model=12", "model.n_heads=4"], "model.position=rope needs an even head_dim"),
    (["data=text"], "data.source=text needs data.path: pass data.path="),
    (["data=prepared"], "data.source=prepared needs data.blend: pass data.blend="),
    (["data.val_fraction=1.5"], "data.val_fraction=1.5 must be in (0, 1)"),
    (["data.vocab_size=0"], "data.vocab_size=0 must be positive: set data.vocab_size="),
    (["trainer.global_batch_size=12"], "trainer.global_batch_size=12 is not divisible by micro_batch_size"),
    (["trainer.micro_batch_size=0"], "trainer.micro_batch_size=0 must be positive: set trainer.micro_batch_size="),
    (["trainer.eval_interval=0"], "trainer.eval_interval=0 must be positive: set trainer.eval_interval="),
    (["trainer.keep_last=0"], "trainer.keep_last=0 must be positive: set trainer.keep_last=2 (the default)"),
    (["trainer.save_interval=-1"], "trainer.save_interval=-1 must not be negative: set trainer.save_interval="),
    (["trainer.sample_temperature=-0.5"], "trainer.sample_temperature=-0.5 must not be negative: set"),
    (["trainer.sample_top_k=-1"], "trainer.sample_top_k=-1 must not be negative: set trainer.sample_top_k=50"),
    (["optim.lr=0"], "optim.lr=0.0 must be positive: set optim.lr=0.0006 (the default)"),
    (["optim.min_lr=1e-2"], "optim.min_lr=0.01 exceeds optim.lr=0.0006: lower min_lr"),
    (["optim.beta2=1.0"], "optim.beta2=1.0 must be in [0, 1): set optim.beta2=0.95 (the default)"),
    (["optim.beta1=-0.1"], "optim.beta1=-0.1 must be in [0, 1): set optim.beta1=0.9 (the default)"),
    (["optim.eps=0"], "optim.eps=0.0 must be positive: set optim.eps=1e-08 (the default)"),
    (["optim.weight_decay=-0.1"], "optim.weight_decay=-0.1 must not be negative: set optim.weight_decay=0.1"),
    (["optim.grad_clip=-1"], "optim.grad_clip=-1.0 must not be negative: set optim.grad_clip=1.0"),
    (["optim.warmup_steps=-3"], "optim.warmup_steps=-3 must not be negative: set optim.warmup_steps="),
    (["optim.decay_steps=0"], "optim.decay_steps=0 must be positive: leave optim.decay_steps unset (null)"),
    (["logging.peak_tflops=0"], "logging.peak_tflops=0.0 must be positive: leave logging.peak_tflops unset"),
    (["logging.wandb_mode=sometimes"], "logging.wandb_mode='sometimes' is not allowed: use one of"),
    (["run.name=../elsewhere"], "run.name='../elsewhere' must be a relative name inside run.root"),
    (["parallel.sequence_parallel=true"], "parallel.sequence_parallel=true needs parallel.tensor_parallel > 1"),
    (["trainer.compile=true", "parallel=zero3"], "trainer.compile=true cannot combine with parallel.zero_stage=3: "),
    (
        ["trainer.compile=true", "trainer.activation_checkpointing=full"],
        "trainer.compile=true cannot combine with trainer.activation_checkpointing=full: recomputing",
    ),
    (["optim.implementation=apex"], "optim.implementation='apex' is not allowed: use one of auto|fused|foreach"),
    (["trainer.threads=0"], "trainer.threads=0 must be positive: leave trainer.threads unset (null)"),
    (["model.moe.experts=1"], "model.moe.experts=1: a mixture needs 2 experts or more (0 keeps the model dense)"),
    (["model=moe_tiny", "model.moe.top_k=9"], "model.moe.top_k=9 must be between 1 and model.moe.experts=8"),
    (["model=moe_tiny", "model.moe.every=5"], "model.moe.every=5 must be between 1 and model.n_layers=4"),
    (["model=moe_tiny", "model.moe.capacity_factor=0"], "model.moe.capacity_factor=0.0 must be positive (null:"),
    (["model=moe_tiny", "model.moe.aux_loss_coef=-1"], "model.moe.aux_loss_coef=-1.0 must be 0 or more"),
    (["+model.moe.expert=4"], "unknown config key 'model.moe.expert' (value 4): did you mean 'model.moe.experts'?"),
    (
        ["model=moe_tiny", "parallel=tp2_sp"],
        "model.moe cannot combine with parallel.sequence_parallel=true: routing needs every position",
    ),
    (["model=moe_tiny", "parallel=zero3"], "model.moe cannot combine with parallel.zero_stage=3 yet"),
]


def test_the_bad_config_table_is_large():
    assert len(BAD_CONFIGS) >= 30


@pytest.mark.parametrize("overrides,message", BAD_CONFIGS)
def test_bad_configs_name_key_value_and_fix(overrides, message):
    with pytest.raises(ConfigError) as err:
        validate(compose(overrides), world_size=1)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "kwargs,world,message",
    [
        (
            dict(model=ModelConfig(n_heads=6, d_model=384), parallel=ParallelConfig(tensor_parallel=4)),
            4,
            "model.n_heads=6 is not divisible by parallel.tensor_parallel=4",
        ),
        (
            dict(model=ModelConfig(n_kv_heads=2), parallel=ParallelConfig(tensor_parallel=4)),
            4,
            "model.n_kv_heads=2 is not divisible by parallel.tensor_parallel=4",
        ),
        (
            dict(model=ModelConfig(n_layers=2), parallel=ParallelConfig(pipeline_parallel=4)),
            4,
            "model.n_layers=2 is less than parallel.pipeline_parallel=4",
        ),
        (
            dict(parallel=ParallelConfig(zero_stage=2, pipeline_parallel=2)),
            2,
            "parallel.zero_stage=2 cannot combine with pipeline_parallel=2",
        ),
        (dict(parallel=ParallelConfig(tensor_parallel=2)), 3, "world size 3 is not divisible"),
        (
            dict(parallel=ParallelConfig(sequence_parallel=True)),
            1,
            "sequence_parallel=true needs parallel.tensor_parallel > 1",
        ),
        (dict(trainer=TrainerConfig(global_batch_size=24, micro_batch_size=8)), 2, "use a multiple of 16"),
        (
            dict(parallel=ParallelConfig(tensor_parallel=2), trainer=TrainerConfig(compile=True)),
            2,
            "trainer.compile=true cannot combine with parallel.tensor_parallel=2: megatron-core",
        ),
        (
            dict(parallel=ParallelConfig(pipeline_parallel=2), trainer=TrainerConfig(compile=True)),
            2,
            "trainer.compile=true cannot combine with parallel.pipeline_parallel=2: DeepSpeed's pipeline",
        ),
    ],
)
def test_impossible_layouts(kwargs, world, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(Config(**kwargs), world_size=world)


def test_derived_layout_and_deepspeed_config():
    cfg = Config(
        parallel=ParallelConfig(zero_stage=2, tensor_parallel=2),
        trainer=TrainerConfig(global_batch_size=32, micro_batch_size=4),
    )
    layout = validate(cfg, world_size=8)
    assert (layout.data, layout.grad_accum) == (4, 2)
    ds = deepspeed_config(cfg, layout)
    assert ds["train_batch_size"] == 32 and ds["gradient_accumulation_steps"] == 2
    assert ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * layout.data == 32
    assert ds["zero_optimization"]["stage"] == 2


def test_fp16_loss_scaling_comes_from_config():
    cfg = compose(["precision=fp16", "precision.initial_scale_power=12", "precision.hysteresis=3"])
    fp16 = deepspeed_config(cfg, validate(cfg, world_size=1))["fp16"]
    assert fp16 == {
        "enabled": True,
        "loss_scale": 0,
        "initial_scale_power": 12,
        "loss_scale_window": 1000,
        "hysteresis": 3,
        "min_loss_scale": 1.0,
    }


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_mixed_precision_keeps_fp32_master_weights(dtype):
    cfg = compose([f"precision={dtype}"])
    ds = deepspeed_config(cfg, validate(cfg, world_size=1))
    assert ds["zero_optimization"]["stage"] == 1
    assert ds.get("data_types") == ({"grad_accum_dtype": "fp32"} if dtype == "bf16" else None)
    cfg = compose([f"precision={dtype}", "parallel=zero3"])
    assert deepspeed_config(cfg, validate(cfg, world_size=1))["zero_optimization"]["stage"] == 3


def test_from_dict_rejects_non_mapping():
    with pytest.raises(ConfigError, match="model: expected a mapping"):
        from_dict({"model": 3})


def test_configs_are_data_never_code(tmp_path):
    """An override that looks like Python stays a string; nothing is evaluated."""
    marker = tmp_path / "evaluated"
    code = f"__import__('pathlib').Path('{marker}').touch()"
    cfg = compose([f'model.name="{code}"', f'run.name="{code.replace("/", "_")}"'])
    assert cfg.model.name == code and not marker.exists()
    with pytest.raises(ConfigError, match="must be an integer"):
        compose(["model.n_layers=\"__import__('os').getpid()\""])
