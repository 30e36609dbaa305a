"""Corpus, tokenizer and the prepared-data cache."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from megatron.core.datasets.indexed_dataset import IndexedDataset

from bigtrain.config import DataConfig
from bigtrain.data.blend import plan_builtin
from bigtrain.data.corpus import DataError, load_corpus, split_documents
from bigtrain.data.dataset import Batches, Prefetched, build_datasets
from bigtrain.data.prepare import cache_key, prepare


def test_split_is_first_ninety_percent_of_text():
    train, val = split_documents(["abcdefghij" * 10], 0.1)
    assert train == ["abcdefghij" * 9] and val == ["abcdefghij"]
    train, val = split_documents(["aaaa", "bbbb", "cc"], 0.5)  # cut at 5 chars
    assert train == ["aaaa", "b"] and val == ["bbb", "cc"]


def test_stdlib_corpus_is_found_without_download():
    corpus = load_corpus(DataConfig(max_bytes=200_000))
    assert len(corpus.documents) > 3
    assert sum(map(len, corpus.documents)) <= 200_000
    assert "def " in corpus.documents[0] or "import" in corpus.documents[0]


@pytest.mark.parametrize("kind", ["char", "bpe", "unigram"])
def test_tokenizers_are_lossless(kind, corpus, cache_dir):
    cfg = DataConfig(
        name=f"t-{kind}",
        source="text",
        path=str(corpus),
        tokenizer=kind,
        vocab_size=600,
        max_bytes=300_000,
        append_eod=False,
    )
    prepared = prepare(cfg, log=lambda *a: None)
    tok = prepared.tokenizer
    text = corpus.read_text()[:5000]
    if kind != "char":  # byte fallback keeps characters the corpus never had
        text += "\n  tabs\tand unicode: é ü 漢字\n"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    if kind == "char":
        chars = set(corpus.read_text()[: int(300_000 * 0.9)])
        assert tok.vocab_size == len(chars) + 3  # each character, plus unk, bos, eos
        assert len(tok.encode("First Citizen:\n")) == len("First Citizen:\n")
    else:
        assert len(ids) < len(text)  # merges happened


def test_too_small_vocab_is_a_clear_error(corpus, cache_dir):
    cfg = DataConfig(name="smallvocab", source="text", path=str(corpus), vocab_size=100, max_bytes=50_000)
    with pytest.raises(DataError, match=r"data.vocab_size=100 is too small .* raise data.vocab_size"):
        prepare(cfg, log=lambda *a: None)


def test_prepared_files_hold_the_tokens(corpus, cache_dir):

    cfg = DataConfig(
        name="files", source="text", path=str(corpus), tokenizer="char", max_bytes=100_000, append_eod=False
    )
    prepared = prepare(cfg, log=lambda *a: None)
    text = corpus.read_text()[:100_000]
    train = IndexedDataset(prepared.prefix("train"))
    assert prepared.tokenizer.decode(train[0].tolist()) == text[:90_000]
    val = IndexedDataset(prepared.prefix("val"))
    assert prepared.tokenizer.decode(val[0].tolist()) == text[90_000:]
    assert prepared.tokens("train") == 90_000 and prepared.tokens("val") == 10_000


def test_cache_key_changes_with_every_input():
    base = DataConfig()
    keys = {
        cache_key(base, "corpus-a"),
        cache_key(base, "corpus-b"),
        cache_key(DataConfig(tokenizer="unigram"), "corpus-a"),
        cache_key(DataConfig(vocab_size=1000), "corpus-a"),
        cache_key(DataConfig(val_fraction=0.2), "corpus-a"),
        cache_key(DataConfig(append_eod=False), "corpus-a"),
    }
    assert len(keys) == 6


def test_cache_reused_then_rebuilt_when_corrupt(corpus, cache_dir):
    cfg = DataConfig(name="corrupt", source="text", path=str(corpus), tokenizer="char", max_bytes=50_000)
    messages = []
    first = prepare(cfg, log=messages.append)
    assert any("preparing" in m for m in messages)
    messages.clear()
    assert prepare(cfg, log=messages.append).root == first.root and messages == []
    bin_file = first.root / "train.bin"
    bin_file.write_bytes(bin_file.read_bytes()[:-10])  # a truncated file
    again = prepare(cfg, log=messages.append)
    assert any("corrupt" in m for m in messages)
    assert (again.root / "train.bin").stat().st_size == json.loads((again.root / "meta.json").read_text())["bytes"][
        "train"
    ]["bin"]


def test_changed_corpus_builds_new_cache(tmp_path, cache_dir):
    path = tmp_path / "c.txt"
    path.write_text("hello world\n" * 500)
    cfg = DataConfig(name="changing", source="text", path=str(path), tokenizer="char")
    a = prepare(cfg, log=lambda *a: None)
    path.write_text("goodbye world\n" * 500)
    b = prepare(cfg, log=lambda *a: None)
    assert a.root != b.root and "g" in b.tokenizer.sp.id_to_piece(list(range(b.tokenizer.vocab_size)))


@pytest.mark.parametrize(
    "content,message",
    [
        (None, "does not exist"),
        (b"", "is empty"),
        (b"\xff\xfe\x00bad", "is not UTF-8"),
    ],
)
def test_bad_text_files_get_clear_errors(tmp_path, content, message):
    path = tmp_path / "corpus.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        load_corpus(DataConfig(source="text", path=str(path)))


def test_too_small_split_is_refused_before_gptdataset(tmp_path, cache_dir):
    path = tmp_path / "small.txt"
    path.write_text("tiny corpus " * 20)
    prepared = prepare(DataConfig(name="small", source="text", path=str(path), tokenizer="char"), log=lambda *a: None)
    with pytest.raises(DataError, match=r"val split of .* has 25 tokens, fewer than model.seq_len \+ 1 = 65"):
        plan_builtin(prepared, 64)


def test_batches_depend_only_on_step_not_layout(corpus, cache_dir, world1):
    cfg = DataConfig(name="batches", source="text", path=str(corpus), tokenizer="char", max_bytes=200_000)
    prepared = prepare(cfg, log=lambda *a: None)
    train, _ = build_datasets(plan_builtin(prepared, 32), 32, seed=1, train_samples=64)
    one = Batches(train, global_batch=8, micro_batch=8, dp_size=1, dp_rank=0).get(3, 0).tokens
    parts = [Batches(train, 8, 2, 2, r).get(3, m).tokens for m in range(2) for r in range(2)]
    assert np.array_equal(one.numpy(), np.concatenate([p.numpy() for p in parts]))
    b = Batches(train, 8, 8, 1, 0).get(0, 0)
    assert np.array_equal(b.labels[:, :-1].numpy(), b.tokens[:, 1:].numpy())


def test_prefetched_batches_equal_direct_ones_in_any_order(corpus, cache_dir, world1):
    cfg = DataConfig(name="batches", source="text", path=str(corpus), tokenizer="char", max_bytes=200_000)
    train, _ = build_datasets(plan_builtin(prepare(cfg, log=lambda *a: None), 32), 32, seed=1, train_samples=64)
    direct, ahead = Batches(train, 8, 4, 1, 0), Prefetched(Batches(train, 8, 4, 1, 0))
    try:
        for step in (0, 1, 2, 5, 6, 3):  # in order (served from the background thread), then jumps
            got, want = ahead.step_batches(step), direct.step_batches(step)
            assert len(got) == len(want) == 2
            for g, w in zip(got, want):
                assert torch.equal(g.tokens, w.tokens) and torch.equal(g.labels, w.labels)
                assert torch.equal(g.loss_mask, w.loss_mask)
        assert ahead.pending[0] == 4  # the next step is already on its way
    finally:
        ahead.close()


@pytest.mark.parametrize("source", ["stdlib", "text"])
def test_warm_start_reads_no_corpus_text(source, corpus, cache_dir, tmp_path, monkeypatch):
    """With the cache in place, preparing stats the corpus files and reads none of them; a new
    modification time counts as a changed corpus."""
    text = tmp_path / "corpus.txt"
    text.write_text(corpus.read_text()[:100_000])
    cfg = DataConfig(name=f"warm-{source}", source=source, path=str(text), tokenizer="char", max_bytes=100_000)
    first = prepare(cfg, log=lambda *a: None)
    read = []
    real_read_text, real_open = Path.read_text, Path.open

    def read_text(self, *a, **kw):
        if self.suffix in (".py", ".txt"):
            read.append(self)
        return real_read_text(self, *a, **kw)

    def path_open(self, *a, **kw):
        if self.suffix in (".py", ".txt"):
            read.append(self)
        return real_open(self, *a, **kw)

    monkeypatch.setattr(Path, "read_text", read_text)
    monkeypatch.setattr(Path, "open", path_open)
    again = prepare(cfg, log=lambda *a: None)
    assert again.root == first.root and again.meta == first.meta
    assert read == []
    if source == "text":
        os.utime(text, ns=(text.stat().st_atime_ns, text.stat().st_mtime_ns + 10**9))
        assert prepare(cfg, log=lambda *a: None).root != first.root
        assert set(read) == {text.resolve()}
