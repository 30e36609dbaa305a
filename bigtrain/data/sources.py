"""Raw inputs → a stream of documents, never holding a whole file in memory.

Inputs are files, folders (every file below, in sorted order) and globs. The format follows the
name: `.jsonl` / `.jsonl.gz` (one JSON object per line, the text under a configurable key),
`.parquet` (a text column, read in record batches), anything else plain UTF-8 text, where a blank
line ends a document. Damage is counted, not fatal: every skipped line, document or file adds one
to `Skips` under its reason, and the preprocessing summary reports them.
"""

from __future__ import annotations

import glob
import gzip
import json
import zlib
from collections import Counter
from pathlib import Path
from typing import Iterator

import pyarrow.parquet as pq

from bigtrain.data.corpus import DataError

READ_LIMIT = 1 << 20  # longest line read at once (1 MiB); a longer line is cut, never loaded whole
BINARY_PROBE = 8192  # a NUL byte in the first 8 KiB marks a binary file


class Skips(Counter):
    """Reason → count of what the reader dropped or repaired."""


def expand_inputs(patterns: list[str]) -> list[Path]:
    """Files, folders and globs → the files they name, deduplicated, in a stable order."""
    if not patterns:
        raise DataError("no inputs: pass inputs=[file, folder or glob, ...]")
    files: list[Path] = []
    for pattern in patterns:
        path = Path(pattern).expanduser()
        if path.is_file():
            found = [path]
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file())
        else:
            found = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not found:
            raise DataError(f"input {pattern!r} matches no files: pass an existing file, a folder with files or a glob")
        files.extend(found)
    return list(dict.fromkeys(files))


def kind_of(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz", ".json.gz", ".ndjson")):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    return "text"


def documents(path: Path, text_key: str, skips: Skips, max_doc_chars: int) -> Iterator[str]:
    """The documents of one input file; problems are counted in `skips`."""
    try:
        if path.stat().st_size == 0:
            skips["empty_file"] += 1
            return
        kind = kind_of(path)
        if kind == "parquet":
            yield from _parquet(path, text_key, skips)
        elif kind == "jsonl":
            yield from _jsonl(path, text_key, skips)
        else:
            yield from _text(path, skips, max_doc_chars)
    except OSError as err:
        raise DataError(
            f"cannot read input {path}: {err.strerror or err}: check the file and its permissions"
        ) from None


def _decode(raw: bytes, skips: Skips) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        skips["non_utf8_lines_repaired"] += 1  # invalid bytes become U+FFFD
        return raw.decode("utf-8", errors="replace")


def _lines(stream, skips: Skips, count_cuts: bool = True) -> Iterator[bytes]:
    """Lines of at most READ_LIMIT bytes; a longer line arrives in pieces (counted once)."""
    cut = False
    while True:
        line = stream.readline(READ_LIMIT)
        if not line:
            return
        if not line.endswith(b"\n") and len(line) == READ_LIMIT:
            if not cut and count_cuts:
                skips["long_lines_split"] += 1
            cut = True
        else:
            cut = False
        yield line


def _text(path: Path, skips: Skips, max_doc_chars: int) -> Iterator[str]:
    with open(path, "rb") as f:
        if b"\0" in f.read(BINARY_PROBE):
            skips["binary_files"] += 1
            return
        f.seek(0)
        parts, size = [], 0
        for raw in _lines(f, skips):
            line = _decode(raw, skips)
            if not line.strip():  # a blank line ends the document
                if parts:
                    yield "".join(parts)
                parts, size = [], 0
                continue
            parts.append(line)
            size += len(line)
            if size >= max_doc_chars:  # bounded memory: a document without blank lines is cut
                skips["long_documents_split"] += 1
                yield "".join(parts)
                parts, size = [], 0
        if parts:
            yield "".join(parts)


def _jsonl(path: Path, key: str, skips: Skips) -> Iterator[str]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as f:
        try:
            pending = b""
            for raw in _lines(f, skips, count_cuts=False):  # a long JSON line is joined again
                pending += raw
                if not raw.endswith(b"\n") and len(raw) == READ_LIMIT:
                    if len(pending) > 64 * READ_LIMIT:  # a 64 MiB line: not a document we keep
                        skips["oversized_json_lines"] += 1
                        pending = b""
                    continue  # a long JSON line: keep reading until its end
                line, pending = pending, b""
                if not line.strip():
                    skips["blank_lines"] += 1
                    continue
                try:
                    record = json.loads(_decode(line, skips))
                except json.JSONDecodeError:
                    skips["invalid_json_lines"] += 1
                    continue
                text = record.get(key) if isinstance(record, dict) else None
                if not isinstance(text, str):
                    skips[f"json_lines_without_text_key_{key}"] += 1
                    continue
                if text.strip():
                    yield text
                else:
                    skips["empty_documents"] += 1
        except (EOFError, gzip.BadGzipFile, zlib.error):
            skips["truncated_or_corrupt_gzip_files"] += 1  # the documents before the damage are kept


def _parquet(path: Path, column: str, skips: Skips) -> Iterator[str]:
    try:
        file = pq.ParquetFile(path)
    except Exception:  # pyarrow raises its own ArrowInvalid/ArrowIOError types for damaged files
        skips["unreadable_parquet_files"] += 1
        return
    if column not in file.schema_arrow.names:
        skips[f"parquet_files_without_column_{column}"] += 1
        return
    for batch in file.iter_batches(columns=[column], batch_size=1024):
        for text in batch.column(0).to_pylist():
            if isinstance(text, str) and text.strip():
                yield text
            else:
                skips["empty_documents"] += 1
