"""The built-in corpora (data.source=stdlib|text) → tokenizer → megatron-core `.bin/.idx`, cached
by what produced them. The tokens are written by `bigtrain-prepare`'s streaming writer
(`preprocess.write_prefix`), so both ways in build the same files the same way.

The cache folder is keyed by the corpus fingerprint (file names, sizes, mtimes: a warm start
reads no corpus text), the tokenizer settings and the split, so
changing any of them builds a new folder and never reuses stale tokens. A folder is built under
a temporary name and renamed into place, so a crash never leaves a half-written one that looks
complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bigtrain.config.schema import DataConfig
from bigtrain.data.corpus import fingerprint, load_corpus, split_documents
from bigtrain.data.preprocess import write_prefix
from bigtrain.data.tokenizer import Tokenizer, token_dtype, train_tokenizer

FORMAT_VERSION = 1
SPLITS = ("train", "val")


@dataclass(frozen=True)
class Prepared:
    root: Path
    meta: dict

    @property
    def tokenizer(self) -> Tokenizer:
        return Tokenizer(self.root / "tokenizer.model")

    def prefix(self, split: str) -> str:
        return str(self.root / split)

    def tokens(self, split: str) -> int:
        return self.meta["tokens"][split]


def cache_root(cfg: DataConfig) -> Path:
    base = cfg.cache_dir or os.environ.get("BIGTRAIN_CACHE") or Path.home() / ".cache" / "bigtrain"
    return Path(base).expanduser() / "data"


def cache_key(cfg: DataConfig, fingerprint: str) -> str:
    settings = {
        "format": FORMAT_VERSION,
        "corpus": fingerprint,
        "tokenizer": cfg.tokenizer,
        "vocab_size": None if cfg.tokenizer == "char" else cfg.vocab_size,
        "val_fraction": cfg.val_fraction,
        "append_eod": cfg.append_eod,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def prepare(cfg: DataConfig, log=print) -> Prepared:
    """Return the prepared data for `cfg`, building it if no intact cached copy exists."""
    root = cache_root(cfg) / f"{cfg.name}-{cache_key(cfg, fingerprint(cfg))}"
    if _intact(root):
        return Prepared(root, json.loads((root / "meta.json").read_text()))
    if root.exists():
        log(f"prepared data at {root} is incomplete or corrupt: rebuilding it")
        shutil.rmtree(root, ignore_errors=True)
    corpus = load_corpus(cfg)
    log(f"preparing {corpus.description} -> {root}")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=root.name + ".tmp-", dir=root.parent))
    try:
        meta = _build(cfg, corpus.documents, tmp)
        meta["corpus"] = corpus.description
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            tmp.rename(root)
        except OSError:  # another process (another node) finished first; keep theirs
            if not _intact(root):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Prepared(root, json.loads((root / "meta.json").read_text()))


def _build(cfg: DataConfig, docs: list[str], out: Path) -> dict:
    """Train the tokenizer on the train split, then write both splits through `bigtrain-prepare`'s
    streaming writer."""
    train_docs, val_docs = split_documents(docs, cfg.val_fraction)
    tok = train_tokenizer(train_docs, cfg.tokenizer, cfg.vocab_size, out / "tokenizer")
    meta = {
        "format": FORMAT_VERSION,
        "vocab_size": tok.vocab_size,
        "dtype": np.dtype(token_dtype(tok.vocab_size)).name,
        "tokens": {},
        "documents": {},
        "bytes": {},
    }
    for split, split_docs in zip(SPLITS, (train_docs, val_docs)):
        written = write_prefix(split_docs, tok.path, out / split, append_eod=cfg.append_eod)
        meta["tokens"][split] = written["tokens"]
        meta["documents"][split] = written["documents"]
        meta["bytes"][split] = {ext: (out / f"{split}.{ext}").stat().st_size for ext in ("bin", "idx")}
    return meta


def _intact(root: Path) -> bool:
    """meta.json exists and every file it lists has the size it recorded."""
    try:
        meta = json.loads((root / "meta.json").read_text())
        if meta.get("format") != FORMAT_VERSION or not (root / "tokenizer.model").is_file():
            return False
        return all(
            (root / f"{split}.{ext}").stat().st_size == size
            for split in SPLITS
            for ext, size in meta["bytes"][split].items()
        )
    except (OSError, ValueError, KeyError):
        return False
