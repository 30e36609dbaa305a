"""The whole data path: raw jsonl + text → bigtrain-prepare with a tokenizer.json → a weighted
blend → pretraining (loss falls) → bigtrain-generate → Hugging Face export that generates the same."""

import json
import math

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer

from bigtrain.data.tokenizer import HFTokenizer
from tests.helpers.launch import PYTHON, ROOT, launch, read_metrics

pytestmark = pytest.mark.e2e

PROMPT = "ROMEO: What"


def byte_level_bpe(text: str, path) -> None:
    """A GPT-2-style tokenizer.json, trained here with the `tokenizers` library."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(text.splitlines(keepends=True), trainer)
    tok.save(str(path))


def prepare(inputs, output, tokenizer, workers=1):
    proc = launch(
        [
            PYTHON,
            "launch/prepare_data.py",
            f"inputs=[{inputs}]",
            f"output={output}",
            "tokenizer.kind=hf",
            f"tokenizer.path={tokenizer}",
            f"workers={workers}",
            "progress_bar=false",
        ],
        ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(output.with_name(output.name + ".summary.json").read_text())


def test_tokenizer_json_blend_trains_generates_and_exports(corpus, cache_dir, tmp_path):
    text = corpus.read_text()
    byte_level_bpe(text, tmp_path / "tokenizer.json")
    paragraphs = [p + "\n\n" for p in text.split("\n\n") if p.strip()]
    half = len(paragraphs) // 2
    with open(tmp_path / "plays.jsonl", "w") as f:  # source 1: jsonl, one paragraph a document
        for p in paragraphs[:half]:
            f.write(json.dumps({"text": p}) + "\n")
    (tmp_path / "more.txt").write_text("".join(paragraphs[half:]))  # source 2: text, blank lines part documents
    first = prepare(tmp_path / "plays.jsonl", tmp_path / "data" / "plays", tmp_path / "tokenizer.json", workers=2)
    second = prepare(tmp_path / "more.txt", tmp_path / "data" / "more", tmp_path / "tokenizer.json")
    assert first["documents"] == half and first["tokenizer"]["sha256"] == second["tokenizer"]["sha256"]

    run_dir = tmp_path / "run"
    blend = f"data.blend=[0.6,{tmp_path / 'data' / 'plays'},0.4,{tmp_path / 'data' / 'more'}]"
    proc = launch(
        [
            PYTHON,
            "launch/pretrain.py",
            "model=tiny",
            "data=prepared",
            blend,
            "data.val_fraction=0.05",
            f"hydra.run.dir={run_dir}",
            "model.seq_len=64",
            "trainer.max_steps=60",
            "trainer.micro_batch_size=8",
            "trainer.global_batch_size=16",
            "trainer.eval_interval=30",
            "trainer.eval_iters=4",
            "optim.lr=3e-3",
            "optim.warmup_steps=5",
            f"trainer.sample_prompt={PROMPT}",
            "trainer.sample_tokens=20",
            "logging.progress_bar=false",
        ],
        ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "prepared blend 60% " in proc.stdout and "vocab 512" in proc.stdout  # vocab from the tokenizer
    rows = read_metrics(run_dir)
    first_loss, last = rows[0]["loss"], sum(r["loss"] for r in rows[-5:]) / 5
    assert first_loss > math.log(512) - 0.5 and last < first_loss - 1.0, (first_loss, last)
    assert rows[-1]["val_loss"] < first_loss - 1.0

    # generation reads the tokenizer.json saved in the checkpoint
    proc = launch(
        [PYTHON, "launch/generate.py", str(run_dir), "--prompt", PROMPT, "--max-tokens", "20", "--temperature", "0"],
        ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ours = proc.stdout.strip()
    assert ours.startswith(PROMPT) and len(ours) > len(PROMPT)

    # the Hugging Face folder loads with AutoTokenizer and greedily generates the same text
    proc = launch([PYTHON, "launch/export_hf.py", str(run_dir), str(tmp_path / "hf")], ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    ids = HFTokenizer(tmp_path / "tokenizer.json").encode(PROMPT)
    assert hf_tok(PROMPT)["input_ids"] == ids
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    out = hf.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert hf_tok.decode(out[0]) == ours
