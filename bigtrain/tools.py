"""Checkpoint tools behind `bigtrain-export` and `bigtrain-generate`; they work from any layout
because they read the consolidated (unsharded) copy every checkpoint carries, and they need no
process group: the model is built on one process."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from bigtrain.config.schema import ModelConfig
from bigtrain.data.tokenizer import BOS, EOS, Tokenizer
from bigtrain.model.gpt import GPT
from bigtrain.model.hf import to_hf
from bigtrain.model.layers import Vocab
from bigtrain.train.checkpoint import read_meta, resolve
from bigtrain.train.consolidated import load_weights_into_module, read_tensors
from bigtrain.train.sample import generate, last_logits


def load_checkpoint_model(path: str | Path) -> tuple[GPT, Tokenizer, dict]:
    """(GPT in eval mode on one process, tokenizer, meta) from a run dir or checkpoint."""
    ckpt = resolve(path)
    meta = read_meta(ckpt)
    cfg = ModelConfig(**meta["model"])
    model = GPT(cfg, vocab=Vocab.of(meta["vocab_size"], cfg.pad_vocab_multiple))
    load_weights_into_module(model, read_tensors(ckpt / "bigtrain"), cfg.n_layers)
    return model.eval(), Tokenizer(ckpt / "bigtrain" / "tokenizer.model"), meta


def export_hf(path: str | Path, out: str | Path) -> str:
    """Write a Hugging Face model folder (safetensors, config.json, tokenizer); returns the class."""
    ckpt, out = resolve(path), Path(out)
    meta = read_meta(ckpt)
    arch, config, state = to_hf(
        read_tensors(ckpt / "bigtrain"), ModelConfig(**meta["model"]), meta["vocab_size"], BOS, EOS
    )
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=1))
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": BOS, "eos_token_id": EOS}, indent=1))
    shutil.copy(ckpt / "bigtrain" / "tokenizer.model", out / "tokenizer.model")
    # A sentencepiece model with no dummy prefix and no added BOS/EOS: ids match bigtrain's.
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "LlamaTokenizer",
                "add_bos_token": False,
                "add_eos_token": False,
                "add_prefix_space": False,
                "legacy": False,
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "model_max_length": meta["model"]["seq_len"],
            },
            indent=1,
        )
    )
    (out / "bigtrain_meta.json").write_text(json.dumps({"source": str(ckpt), "step": meta["step"]}, indent=1))
    return arch


@torch.no_grad()
def generate_text(
    path: str | Path, prompt: str, max_tokens: int, temperature: float, top_k: int, top_p: float, seed: int
) -> str:
    model, tokenizer, meta = load_checkpoint_model(path)
    ids = tokenizer.encode(prompt) if prompt else [tokenizer.eod]
    out = generate(last_logits(model), ids, max_tokens, meta["model"]["seq_len"], temperature, top_k, top_p, seed)
    return prompt + tokenizer.decode(out)
