"""Corpora: where the raw text comes from, as a list of documents with a stable fingerprint."""

from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from bigtrain.config.schema import DataConfig


class DataError(ValueError):
    """A corpus or prepared data file that cannot be used; the message names the fix."""


@dataclass
class Corpus:
    documents: list[str]
    fingerprint: str  # changes whenever the text changes
    description: str


def load_corpus(cfg: DataConfig) -> Corpus:
    if cfg.source == "stdlib":
        return _stdlib(cfg.max_bytes)
    return _text_file(cfg.path, cfg.max_bytes, cfg.document_separator)


def _stdlib(max_bytes: int | None) -> Corpus:
    """The running Python's standard-library sources, in sorted path order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    docs, total, digest = [], 0, hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(("site-packages/", "dist-packages/")):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # a few test fixtures are deliberately not UTF-8
        if max_bytes is not None and total + len(text) > max_bytes:
            break
        docs.append(text)
        total += len(text)
        digest.update(rel.encode() + b"\0" + text.encode())
    if not docs:
        raise DataError(f"no Python sources found under {root}: pass data=text data.path=<file>")
    return Corpus(docs, digest.hexdigest(), f"Python stdlib at {root}: {len(docs)} files, {total:,} chars")


def _text_file(path: str | None, max_bytes: int | None, separator: str | None) -> Corpus:
    if not path:
        raise DataError("data.path is not set: pass data.path=/path/to/corpus.txt")
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"data.path={path!r} does not exist or is not a file: pass an existing text file")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(
            f"data.path={path!r} is not UTF-8 text ({err.reason} at byte {err.start}): convert it with iconv -t utf-8"
        ) from None
    if max_bytes is not None:
        text = text[:max_bytes]
    if not text.strip():
        raise DataError(f"data.path={path!r} is empty: pass a file with text in it")
    digest = hashlib.sha256(text.encode()).hexdigest()
    docs = [text]
    if separator:
        pieces = text.split(separator)
        docs = [p + separator for p in pieces[:-1]] + ([pieces[-1]] if pieces[-1] else [])
        digest = hashlib.sha256(f"{digest}|{separator!r}".encode()).hexdigest()
    return Corpus(docs, digest, f"{file}: {len(text):,} chars, {len(docs):,} documents")


def split_documents(docs: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """First (1 - val_fraction) of the text trains, the rest validates; the boundary document is
    cut in two. With one document this is nanoGPT's split (first 90% / last 10% of characters)."""
    total = sum(len(d) for d in docs)
    cut = int(total * (1.0 - val_fraction))
    train, val, seen = [], [], 0
    for doc in docs:
        if seen + len(doc) <= cut:
            train.append(doc)
        elif seen >= cut:
            val.append(doc)
        else:
            train.append(doc[: cut - seen])
            val.append(doc[cut - seen :])
        seen += len(doc)
    return train, val
