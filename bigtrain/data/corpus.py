"""The built-in corpora (stdlib, one text file): their documents, and a fingerprint that needs no
reading. The fingerprint covers file names, sizes and modification times, so a warm start (the
prepared cache exists) stats the files and reads no corpus text."""

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
    description: str


def fingerprint(cfg: DataConfig) -> str:
    """Changes whenever a corpus file is added, removed, resized or modified; reads no text."""
    digest = hashlib.sha256(repr((cfg.source, cfg.max_bytes, cfg.document_separator)).encode())
    for path in _stdlib_files() if cfg.source == "stdlib" else [_text_path(cfg.path)]:
        stat = path.stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def load_corpus(cfg: DataConfig) -> Corpus:
    if cfg.source == "stdlib":
        return _stdlib(cfg.max_bytes)
    return _text_file(cfg.path, cfg.max_bytes, cfg.document_separator)


def _stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _stdlib_files() -> list[Path]:
    """The running Python's standard-library sources, in sorted path order."""
    root = _stdlib_root()
    files = [p for p in sorted(root.rglob("*.py")) if not p.relative_to(root).parts[0].endswith("-packages")]
    if not files:
        raise DataError(f"no Python sources found under {root}: pass data=text data.path=<file>")
    return files


def _stdlib(max_bytes: int | None) -> Corpus:
    root = _stdlib_root()
    docs, total = [], 0
    for path in _stdlib_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # a few test fixtures are deliberately not UTF-8
        if max_bytes is not None and total + len(text) > max_bytes:
            break
        docs.append(text)
        total += len(text)
    return Corpus(docs, f"Python stdlib at {root}: {len(docs)} files, {total:,} chars")


def _text_path(path: str | None) -> Path:
    if not path:
        raise DataError("data.path is not set: pass data.path=/path/to/corpus.txt")
    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise DataError(f"data.path={path!r} does not exist or is not a file: pass an existing text file")
    return file


def _text_file(path: str | None, max_bytes: int | None, separator: str | None) -> Corpus:
    file = _text_path(path)
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
    docs = [text]
    if separator:
        pieces = text.split(separator)
        docs = [p + separator for p in pieces[:-1]] + ([pieces[-1]] if pieces[-1] else [])
    return Corpus(docs, f"{file}: {len(text):,} chars, {len(docs):,} documents")


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
