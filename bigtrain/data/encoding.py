"""Tokenizing one batch of documents, in a `bigtrain-prepare` worker process.

Kept apart from `preprocess.py` so that a spawned worker imports only the tokenizer libraries
and numpy (not DeepSpeed or megatron-core) before it starts.
"""

from __future__ import annotations

import numpy as np

from bigtrain.data.tokenizer import load_tokenizer

_state = None  # (tokenizer, append_eod, dtype), set once per process by init_encoder


def init_encoder(tokenizer_file: str, eod_token: str | None, append_eod: bool, dtype: str) -> None:
    global _state
    _state = (load_tokenizer(tokenizer_file, eod_token), append_eod, np.dtype(dtype))


def encode_batch(batch: list[str]) -> tuple[np.ndarray, np.ndarray, int]:
    """One batch → (concatenated tokens, per-document lengths, bytes of text)."""
    tokenizer, append_eod, dtype = _state
    eod = [tokenizer.eod] if append_eod else []
    # One document's Python ints at a time: lists of ints cost ~36 bytes a token, arrays 2 or 4.
    arrays = [np.array(tokenizer.encode(doc) + eod, dtype=dtype) for doc in batch]
    arrays = [a for a in arrays if a.size]
    lengths = np.array([a.size for a in arrays], dtype=np.int64)
    tokens = np.concatenate(arrays) if arrays else np.zeros(0, dtype=dtype)
    return tokens, lengths, sum(len(doc.encode("utf-8", errors="surrogatepass")) for doc in batch)
