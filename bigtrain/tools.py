"""Checkpoint tools behind launch/export_hf.py and launch/generate.py; they work from any layout
because they read the consolidated (unsharded) copy every checkpoint carries."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from bigtrain.config.schema import ModelConfig
from bigtrain.train.checkpoint import read_meta, resolve
from bigtrain.train.consolidated import read_tensors


def load_checkpoint_model(path: str | Path):
    """(GPT in eval mode on one process, tokenizer, meta) from a run dir or checkpoint."""
    from bigtrain.config.validate import Layout
    from bigtrain.data.tokenizer import Tokenizer
    from bigtrain.model.gpt import GPT
    from bigtrain.parallel.layers import TensorParallel, padded_vocab
    from bigtrain.parallel.state import init_distributed, seed_everything
    from bigtrain.train.consolidated import load_weights_into_module

    ckpt = resolve(path)
    meta = read_meta(ckpt)
    cfg = ModelConfig(**meta["model"])
    ranks = init_distributed(Layout(1, 1, 1, 1, 1))
    seed_everything(0, ranks)
    model = GPT(cfg, TensorParallel(), meta["vocab_size"], seed=0)
    load_weights_into_module(model, read_tensors(ckpt / "bigtrain"), cfg.n_layers,
                             padded_vocab(meta["vocab_size"], cfg.pad_vocab_multiple, 1))
    return model.eval(), Tokenizer(ckpt / "bigtrain" / "tokenizer.model"), meta


def export_hf(path: str | Path, out: str | Path) -> str:
    """Write a Hugging Face model folder (safetensors, config.json, tokenizer); returns the class."""
    from safetensors.torch import save_file

    from bigtrain.data.tokenizer import BOS, EOS
    from bigtrain.model.hf import to_hf

    ckpt, out = resolve(path), Path(out)
    meta = read_meta(ckpt)
    arch, config, state = to_hf(read_tensors(ckpt / "bigtrain"), ModelConfig(**meta["model"]),
                                meta["vocab_size"], BOS, EOS)
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=1))
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": BOS, "eos_token_id": EOS}, indent=1))
    shutil.copy(ckpt / "bigtrain" / "tokenizer.model", out / "tokenizer.model")
    # A sentencepiece model with no dummy prefix and no added BOS/EOS: ids match bigtrain's.
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "add_bos_token": False, "add_eos_token": False,
        "add_prefix_space": False, "legacy": False, "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "model_max_length": config.get("n_positions") or config.get("max_position_embeddings"),
    }, indent=1))
    (out / "bigtrain_meta.json").write_text(json.dumps({"source": str(ckpt), "step": meta["step"]}, indent=1))
    return arch


@torch.no_grad()
def generate_text(path: str | Path, prompt: str, max_tokens: int, temperature: float, top_k: int,
                  top_p: float, seed: int) -> str:
    from bigtrain.train.sample import generate, last_logits

    model, tokenizer, meta = load_checkpoint_model(path)
    ids = tokenizer.encode(prompt) if prompt else [tokenizer.eod]
    out = generate(last_logits(model), ids, max_tokens, meta["model"]["seq_len"], temperature, top_k, top_p, seed)
    return prompt + tokenizer.decode(out)
