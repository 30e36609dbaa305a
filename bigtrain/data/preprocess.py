"""`bigtrain-prepare`: raw corpora → a tokenizer → megatron-core `.bin/.idx`, streaming.

    inputs ──read, filter (dedupe, min length)──▶ batches of documents
           ──N worker processes tokenize──▶ token arrays, in input order
           ──IndexedDatasetBuilder──▶ <output>.bin / <output>.idx

The reader holds one batch per task in flight (at most 2 × workers tasks), so memory stays bounded
whatever the corpus size; results are written in submission order, so the output is the same
bytes for any number of workers. A trained tokenizer learns from the first `sample_bytes` of the
inputs. Files are written under temporary names and renamed at the end: an interrupted run leaves
no prefix that looks complete. `<output>.summary.json` counts documents, tokens, bytes, duplicates
removed and everything skipped, by reason.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import shutil
import time
from collections import deque
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
from tqdm import tqdm

from bigtrain.config.schema import PrepareConfig, TokenizerConfig
from bigtrain.data.corpus import DataError
from bigtrain.data.encoding import encode_batch, init_encoder
from bigtrain.data.files import sha256_file
from bigtrain.data.sources import Skips, documents, expand_inputs
from bigtrain.data.tokenizer import load_tokenizer, token_dtype, train_tokenizer


def prepare_corpus(cfg: PrepareConfig, log=print) -> dict:
    """Run the whole preprocessing; returns the summary it also writes."""
    if not cfg.output:
        raise DataError("output is not set: pass output=/path/to/prefix (writes prefix.bin and prefix.idx)")
    if cfg.workers < 1:
        raise DataError(f"workers={cfg.workers} must be at least 1")
    files = expand_inputs(list(cfg.inputs))
    out = Path(cfg.output).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    tokenizer_file = _tokenizer_file(cfg, files, out, log)
    tokenizer = load_tokenizer(tokenizer_file, cfg.tokenizer.eod_token)
    skips, seen = Skips(), set()
    duplicates = {"removed": 0}
    bar = tqdm(
        total=sum(f.stat().st_size for f in files),
        unit="B",
        unit_scale=True,
        desc="prepare",
        disable=not cfg.progress_bar,
        mininterval=1.0,
    )
    written = write_prefix(
        _filtered(cfg, files, skips, seen, duplicates),
        tokenizer_file,
        out,
        eod_token=cfg.tokenizer.eod_token,
        append_eod=cfg.append_eod,
        workers=cfg.workers,
        batch_docs=cfg.batch_docs,
        bar=bar,
        on_empty=lambda: (
            f"the inputs hold no documents (skipped: {dict(skips) or 'nothing'}): check inputs and text_key"
        ),
    )
    bar.close()
    stats = {key: written[key] for key in ("documents", "tokens", "bytes")}
    stats["duplicates_removed"] = duplicates["removed"]
    seconds = time.perf_counter() - start
    summary = {
        "inputs": len(files),
        **stats,
        "skipped": dict(sorted(skips.items())),
        "dtype": written["dtype"],
        # Training finds the tokenizer by this file and refuses prefixes prepared with another one.
        "tokenizer": {
            "file": tokenizer_file.name,
            "sha256": sha256_file(tokenizer_file),
            "vocab_size": tokenizer.vocab_size,
            "eod": tokenizer.eod,
            "eod_token": tokenizer.eod_token,
        },
        "seconds": round(seconds, 3),
        "mb_per_s": round(stats["bytes"] / 1e6 / seconds, 3),
        "tokens_per_s": round(stats["tokens"] / seconds, 1),
        "workers": cfg.workers,
    }
    out.with_name(out.name + ".summary.json").write_text(json.dumps(summary, indent=1))
    log(
        f"wrote {out}.bin/.idx: {stats['documents']:,} documents, {stats['tokens']:,} tokens "
        f"({summary['mb_per_s']} MB/s, {summary['tokens_per_s']:,.0f} tokens/s); "
        f"skipped: {summary['skipped'] or 'none'}"
    )
    return summary


def _tokenizer_file(cfg: PrepareConfig, files: list[Path], out: Path, log) -> Path:
    """The tokenizer saved beside the prefix: copied when given, else trained on a sample."""
    t: TokenizerConfig = cfg.tokenizer
    if t.kind in ("sentencepiece", "hf"):
        if not t.path:
            raise DataError(f"tokenizer.kind={t.kind} needs tokenizer.path=<existing .model or tokenizer.json>")
        source = Path(t.path).expanduser()
        load_tokenizer(source, t.eod_token)  # fails here, with its one-line error, before any work
        target = out.with_name(out.name + (".tokenizer.json" if t.kind == "hf" else ".tokenizer.model"))
        shutil.copyfile(source, target)
        return target
    sample, size = [], 0
    for doc in _documents(files, cfg, Skips()):
        sample.append(doc)
        size += len(doc)
        if size >= t.sample_bytes:
            break
    if not sample:
        raise DataError("the inputs hold no documents to train a tokenizer on: check inputs and text_key")
    log(f"training a {t.kind} tokenizer on {size:,} characters of the inputs")
    train_tokenizer(sample, t.kind, t.vocab_size, out.with_name(out.name + ".tokenizer"))
    out.with_name(out.name + ".tokenizer.vocab").unlink(missing_ok=True)
    return out.with_name(out.name + ".tokenizer.model")


def _documents(files: list[Path], cfg: PrepareConfig, skips: Skips) -> Iterator[str]:
    for file in files:
        yield from documents(file, cfg.text_key, skips, cfg.max_doc_chars)


def _filtered(cfg: PrepareConfig, files: list[Path], skips: Skips, seen: set, duplicates: dict) -> Iterator[str]:
    for doc in _documents(files, cfg, skips):
        if len(doc) < cfg.min_chars:
            skips["shorter_than_min_chars"] += 1
            continue
        if cfg.dedupe:
            key = hashlib.blake2b(doc.encode("utf-8", errors="surrogatepass"), digest_size=12).digest()
            if key in seen:
                duplicates["removed"] += 1
                continue
            seen.add(key)
        yield doc


def write_prefix(
    docs: Iterable[str],
    tokenizer_file: Path,
    out: Path,
    *,
    eod_token: str | None = None,
    append_eod: bool = True,
    workers: int = 1,
    batch_docs: int = 256,
    bar: tqdm | None = None,
    on_empty: Callable[[], str] | None = None,
) -> dict:
    """Tokenize `docs`, in order, into `out`.bin/.idx (one sequence per document, as Megatron-LM
    writes). The one tokenize-and-build loop of bigtrain: `bigtrain-prepare` and the built-in
    corpora both write through it. Files are written under temporary names and renamed at the end;
    with `on_empty`, no documents raises DataError(on_empty()) and leaves no files."""
    dtype = token_dtype(load_tokenizer(tokenizer_file, eod_token).vocab_size)
    tmp_bin, tmp_idx = out.with_name(out.name + ".bin.tmp"), out.with_name(out.name + ".idx.tmp")
    builder = IndexedDatasetBuilder(str(tmp_bin), dtype=dtype)
    counts = {"documents": 0, "tokens": 0, "bytes": 0}
    start = time.perf_counter()
    init = (str(tokenizer_file), eod_token, append_eod, np.dtype(dtype).name)
    for tokens, lengths, size in _tokenized(_batches(docs, batch_docs, counts), init, workers):
        for doc in np.split(tokens, np.cumsum(lengths)[:-1]) if len(lengths) else ():
            builder.add_document(doc, [len(doc)])
        counts["tokens"] += int(tokens.size)
        counts["bytes"] += size
        if bar is not None:
            bar.update(size)
            rate = counts["tokens"] / max(1e-9, time.perf_counter() - start)
            bar.set_postfix_str(f"{rate:,.0f} tok/s", refresh=False)
    if on_empty is not None and counts["documents"] == 0:
        tmp_bin.unlink(missing_ok=True)
        raise DataError(on_empty())
    builder.finalize(str(tmp_idx))
    tmp_bin.replace(out.with_name(out.name + ".bin"))
    tmp_idx.replace(out.with_name(out.name + ".idx"))
    return counts | {"dtype": np.dtype(dtype).name}


def _batches(docs: Iterable[str], size: int, counts: dict) -> Iterator[list[str]]:
    batch = []
    for doc in docs:
        counts["documents"] += 1
        batch.append(doc)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _tokenized(batches: Iterator[list[str]], init: tuple, workers: int) -> Iterator[tuple]:
    """Encoded batches in input order: inline with one worker, else through a process pool with at
    most 2 × workers batches in flight."""
    if workers == 1:
        init_encoder(*init)
        yield from map(encode_batch, batches)
        return
    # spawn: a fork of this process would copy the reader's state; workers load only the tokenizer.
    with multiprocessing.get_context("spawn").Pool(workers, initializer=init_encoder, initargs=init) as pool:
        pending = deque()
        for batch in batches:
            pending.append(pool.apply_async(encode_batch, (batch,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
