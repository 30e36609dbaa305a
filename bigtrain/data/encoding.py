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
    ids = [tokenizer.encode(doc) + ([tokenizer.eod] if append_eod else []) for doc in batch]
    ids = [d for d in ids if d]
    lengths = np.array([len(d) for d in ids], dtype=np.int64)
    tokens = np.fromiter((t for d in ids for t in d), dtype=dtype, count=int(lengths.sum()))
    return tokens, lengths, sum(len(doc.encode("utf-8", errors="surrogatepass")) for doc in batch)
