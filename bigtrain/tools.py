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
from bigtrain.data.tokenizer import Tokenizer, load_tokenizer
from bigtrain.model.gpt import GPT
from bigtrain.model.hf import to_hf
from bigtrain.model.layers import Vocab
from bigtrain.train.checkpoint import read_meta, resolve
from bigtrain.train.consolidated import load_weights_into_module, read_tensors
from bigtrain.train.sample import generate, last_logits


def checkpoint_tokenizer(ckpt: Path, meta: dict):
    """The tokenizer the run trained with, saved in its checkpoint (sentencepiece or tokenizer.json)."""
    saved = meta.get("tokenizer", {"file": Tokenizer.saved_name, "eod_token": None})
    return load_tokenizer(ckpt / "bigtrain" / saved["file"], saved["eod_token"])


def load_checkpoint_model(path: str | Path) -> tuple[GPT, object, dict]:
    """(GPT in eval mode on one process, tokenizer, meta) from a run dir or checkpoint."""
    ckpt = resolve(path)
    meta = read_meta(ckpt)
    cfg = ModelConfig(**meta["model"])
    model = GPT(cfg, vocab=Vocab.of(meta["vocab_size"], cfg.pad_vocab_multiple))
    load_weights_into_module(model, read_tensors(ckpt / "bigtrain"), cfg.n_layers)
    return model.eval(), checkpoint_tokenizer(ckpt, meta), meta


def export_hf(path: str | Path, out: str | Path) -> str:
    """Write a Hugging Face model folder (safetensors, config.json, tokenizer); returns the class."""
    ckpt, out = resolve(path), Path(out)
    meta = read_meta(ckpt)
    tokenizer = checkpoint_tokenizer(ckpt, meta)
    arch, config, state = to_hf(
        read_tensors(ckpt / "bigtrain"), ModelConfig(**meta["model"]), meta["vocab_size"], tokenizer.bos, tokenizer.eod
    )
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=1))
    generation = {"bos_token_id": tokenizer.bos, "eos_token_id": tokenizer.eod}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=1))
    shutil.copy(tokenizer.path, out / tokenizer.saved_name)
    (out / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config(tokenizer, meta), indent=1))
    (out / "bigtrain_meta.json").write_text(json.dumps({"source": str(ckpt), "step": meta["step"]}, indent=1))
    return arch


def _tokenizer_config(tokenizer, meta: dict) -> dict:
    """transformers' AutoTokenizer settings that give bigtrain's ids: nothing added around the text."""
    common = {"model_max_length": meta["model"]["seq_len"], "add_bos_token": False, "add_eos_token": False}
    if isinstance(tokenizer, Tokenizer):  # no dummy prefix, no added BOS/EOS
        return {
            "tokenizer_class": "LlamaTokenizer",
            "add_prefix_space": False,
            "legacy": False,
            "bos_token": tokenizer.sp.id_to_piece(tokenizer.bos),
            "eos_token": tokenizer.eod_token,
            "unk_token": tokenizer.sp.id_to_piece(tokenizer.sp.unk_id()),
            **common,
        }
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": tokenizer.eod_token,
        "eos_token": tokenizer.eod_token,
        **common,
    }


@torch.no_grad()
def generate_text(
    path: str | Path, prompt: str, max_tokens: int, temperature: float, top_k: int, top_p: float, seed: int
) -> str:
    model, tokenizer, meta = load_checkpoint_model(path)
    ids = tokenizer.encode(prompt) if prompt else [tokenizer.eod]
    out = generate(last_logits(model), ids, max_tokens, meta["model"]["seq_len"], temperature, top_k, top_p, seed)
    return prompt + tokenizer.decode(out)
