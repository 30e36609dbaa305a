"""Hugging Face export behind `bigtrain-export`: from any layout's checkpoint (its consolidated,
unsharded copy), on one process with no process group."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from safetensors.torch import save_file

from bigtrain.data.tokenizer import Tokenizer
from bigtrain.model.hf import to_hf
from bigtrain.train.checkpoint import checkpoint_tokenizer, read_meta, resolve, saved_model
from bigtrain.train.consolidated import read_tensors


def export_hf(path: str | Path, out: str | Path) -> str:
    """Write a Hugging Face model folder (safetensors, config.json, tokenizer); returns the class."""
    ckpt, out = resolve(path), Path(out)
    meta = read_meta(ckpt)
    tokenizer = checkpoint_tokenizer(ckpt, meta)
    model = saved_model(meta)
    tensors = read_tensors(ckpt / "bigtrain")
    arch, config, state = to_hf(tensors, model, meta["vocab_size"], tokenizer.bos, tokenizer.eod)
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
