"""Checkpoint safety, Hugging Face export/import and generation: training on the warm workers
(tests/helpers/pool.py, a crash through the real entry point), export and generation through
launch/export_hf.py and launch/generate.py."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from bigtrain.model.hf import from_hf, load_hf_folder, to_hf
from bigtrain.train.checkpoint import load_checkpoint_model, read_meta, resolve, saved_model
from tests.distributed.parity import COMMON, GPT, LLAMA, run_layout_raw
from tests.helpers import pool
from tests.helpers.launch import PYTHON, ROOT, launch, read_metrics

pytestmark = pytest.mark.pool


def single(corpus, run_dir, extra=(), env=None, launcher=False):
    """One process on a warm worker; `launcher`: `python launch/pretrain.py` itself (a fault
    that ends the process)."""
    args = [f"data.path={corpus}", f"hydra.run.dir={run_dir}", *COMMON, "parallel=single", "trainer.micro_batch_size=4"]
    if launcher:
        return launch([PYTHON, "launch/pretrain.py", *args, *extra], ROOT, env=env)
    return pool.run(1, [*args, *extra], env=env)


@pytest.fixture(scope="module")
def gpt_run(corpus, cache_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("gpt") / "run"
    proc = single(corpus, run_dir, [*GPT, "trainer.max_steps=8"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


@pytest.fixture(scope="module")
def llama_tp2_run(corpus, cache_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("llama")
    proc = run_layout_raw(
        corpus,
        base,
        2,
        [*LLAMA, "parallel=tp2", "trainer.micro_batch_size=4", "trainer.max_steps=8", "model.bias=true"],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return base / "run"


@pytest.fixture(scope="module")
def shakespeare_run(corpus, cache_dir, tmp_path_factory):
    """The flagship preset (rotary + LayerNorm + GELU, no biases, tied head): GPT-NeoX's family."""
    run_dir = tmp_path_factory.mktemp("shakespeare") / "run"
    proc = single(corpus, run_dir, ["experiment=shakespeare_char_cpu", "trainer.max_steps=30"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def export(run_dir, out):
    proc = launch([PYTHON, "launch/export_hf.py", str(run_dir), str(out)], ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.parametrize(
    "which,arch",
    [("gpt_run", "GPT2LMHeadModel"), ("llama_tp2_run", "LlamaForCausalLM"), ("shakespeare_run", "GPTNeoXForCausalLM")],
)
def test_export_matches_transformers(which, arch, request, tmp_path):

    run_dir = request.getfixturevalue(which)
    assert f"wrote {arch}" in export(run_dir, tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    assert type(hf).__name__ == arch
    model, tokenizer, meta = load_checkpoint_model(run_dir)
    vocab = meta["vocab_size"]
    tokens = torch.randint(0, vocab, (3, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(tokens)[..., :vocab].transpose(0, 1)  # (B, T, V)
        theirs = hf(tokens).logits
    assert theirs.shape == ours.shape
    diff = (ours - theirs).abs().max().item()
    print(f"\n{arch}: max |logit difference| = {diff:.2e}")
    assert diff < 1e-5
    text = "First Citizen:\nBefore we proceed any further, hear me speak."
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert hf_tok(text)["input_ids"] == tokenizer.encode(text)
    assert hf_tok.decode(tokenizer.encode(text)) == text


@pytest.mark.parametrize("which", ["gpt_run", "llama_tp2_run", "shakespeare_run"])
def test_import_round_trip_is_identical(which, request, tmp_path, corpus):

    run_dir = request.getfixturevalue(which)
    export(run_dir, tmp_path / "hf")
    meta = read_meta(resolve(run_dir))
    cfg = saved_model(meta)
    original = load_file(str(tmp_path / "hf" / "model.safetensors"))
    tensors = load_hf_folder(tmp_path / "hf", cfg, meta["vocab_size"])  # HF → bigtrain
    _, _, again = to_hf(tensors, cfg, meta["vocab_size"], 1, 2)  # → HF
    assert original.keys() == again.keys()
    assert all(torch.equal(original[k], again[k]) for k in original)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert all(torch.equal(tensors[k], v) for k, v in from_hf(original, config, cfg).items())


def test_init_from_starts_continued_pretraining(gpt_run, corpus, tmp_path):
    export(gpt_run, tmp_path / "hf")
    source = read_metrics(gpt_run)
    proc = single(corpus, tmp_path / "run", [*GPT, f"model.init_from={tmp_path / 'hf'}", "trainer.max_steps=2"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "initialized weights from Hugging Face folder" in proc.stdout
    rows = read_metrics(tmp_path / "run")
    assert rows[0]["loss"] < source[0]["loss"] - 0.3  # starts where the source run had got to
    mismatch = single(corpus, tmp_path / "bad", [*GPT, "model.n_layers=2", f"model.init_from={tmp_path / 'hf'}"])
    assert mismatch.returncode == 2
    assert "model.init_from does not match the requested model (n_layer: folder 4, model 2)" in mismatch.stderr


def test_flagship_preset_reimports_its_neox_export(shakespeare_run, corpus, tmp_path):
    """experiment=shakespeare_char_cpu → GPTNeoXForCausalLM folder → model.init_from of the same preset."""
    export(shakespeare_run, tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (config["model_type"], config["use_parallel_residual"], config["tie_word_embeddings"]) == (
        "gpt_neox",
        False,
        True,
    )
    preset = ["experiment=shakespeare_char_cpu", "trainer.max_steps=2"]
    proc = single(corpus, tmp_path / "run", [*preset, f"model.init_from={tmp_path / 'hf'}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "initialized weights from Hugging Face folder" in proc.stdout
    source = read_metrics(shakespeare_run)
    # The preset warms up over 100 steps, so the source moved little: the imported run must start
    # at least halfway from where a fresh run starts (the source's first loss) to where it ended.
    midway = (source[0]["loss"] + source[-1]["loss"]) / 2
    assert source[-1]["loss"] < source[0]["loss"] - 0.3
    assert read_metrics(tmp_path / "run")[0]["loss"] < midway


def test_generate_from_tensor_parallel_checkpoint(llama_tp2_run):
    args = [PYTHON, "launch/generate.py", str(llama_tp2_run), "--prompt", "ROMEO:", "--max-tokens", "30"]
    greedy = [launch([*args, "--temperature", "0"], ROOT, timeout=300) for _ in range(2)]
    assert all(p.returncode == 0 for p in greedy), greedy[0].stderr[-2000:]
    assert greedy[0].stdout == greedy[1].stdout and greedy[0].stdout.startswith("ROMEO:")
    assert len(greedy[0].stdout) > len("ROMEO:\n")
    sampled = launch(
        [*args, "--temperature", "1.0", "--top-k", "5", "--top-p", "0.9", "--seed", "3"], ROOT, timeout=300
    )
    assert sampled.returncode == 0 and sampled.stdout.startswith("ROMEO:")
    assert len(sampled.stdout.strip()) > len("ROMEO:") + 10 and sampled.stdout != greedy[0].stdout


def test_crash_during_checkpoint_write_resumes_from_previous(corpus, cache_dir, tmp_path):
    run_dir = tmp_path / "run"
    extra = [*GPT, "trainer.max_steps=12", "trainer.save_interval=4", "trainer.keep_last=2"]
    crashed = single(corpus, run_dir, extra, env={"BIGTRAIN_FAULT": "before_publish:8"}, launcher=True)
    assert crashed.returncode != 0
    ckpts = run_dir / "checkpoints"
    assert (ckpts / "step_00000008.partial").is_dir()  # written, never published
    assert (ckpts / "latest").read_text() == "step_00000004"
    assert [r["step"] for r in read_metrics(run_dir)] == list(range(1, 9))
    resumed = single(corpus, run_dir, extra)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout and "step_00000004 at step 4" in resumed.stdout
    assert [r["step"] for r in read_metrics(run_dir)] == list(range(1, 13))  # no duplicated steps
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_00000008", "step_00000012"]
    # The resumed run is the run that never crashed.
    clean = single(corpus, tmp_path / "clean", extra)
    assert clean.returncode == 0
    assert [r["loss"] for r in read_metrics(run_dir)] == [r["loss"] for r in read_metrics(tmp_path / "clean")]


def test_model_mismatch_is_a_clear_error(gpt_run, corpus, tmp_path):
    shutil.copytree(gpt_run, tmp_path / "run")
    proc = single(corpus, tmp_path / "run", [*GPT, "model.n_layers=2", "model.d_model=32"])
    assert proc.returncode == 2
    assert (
        "holds a different model (model.n_layers: checkpoint 4, requested 2; model.d_model: checkpoint 64, "
        "requested 32)" in proc.stderr
    )
    assert "Traceback" not in proc.stderr


def test_checkpoint_files_load_without_pickle(gpt_run):

    ckpt = resolve(gpt_run)
    assert torch.load(ckpt / "rng" / "rank0.pt", weights_only=True)
    files = sorted((ckpt / "bigtrain").glob("*.safetensors"))
    assert [f.name for f in files] == ["model-pp00.safetensors", "optim-pp00.safetensors"], files
    for file in files:
        assert load_file(str(file))
