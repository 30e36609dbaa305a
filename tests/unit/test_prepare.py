"""bigtrain-prepare: hostile inputs are counted or refused in one line, outputs do not depend on
the number of workers, and the .bin/.idx tokens decode back to the input for every tokenizer kind."""

import gzip
import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset
from tokenizers import Tokenizer as HFBackend
from tokenizers import decoders, models, pre_tokenizers, trainers

from bigtrain.config.schema import PrepareConfig, TokenizerConfig
from bigtrain.data.corpus import DataError
from bigtrain.data.preprocess import prepare_corpus
from bigtrain.data.sources import READ_LIMIT
from bigtrain.data.tokenizer import load_tokenizer

DOCS = [f"Document {i}: the quick brown fox, café ünïcode, number {i * 7}.\nA second line.\n" for i in range(40)]


def cfg(tmp_path, inputs, **kw) -> PrepareConfig:
    tok = kw.pop("tokenizer", TokenizerConfig(kind="bpe", vocab_size=400))
    return PrepareConfig(
        inputs=tuple(str(i) for i in inputs),
        output=str(tmp_path / "out" / "corpus"),
        tokenizer=tok,
        progress_bar=False,
        **kw,
    )


def read_docs(prefix, tokenizer) -> list[str]:
    data = IndexedDataset(str(prefix))
    return [tokenizer.decode([t for t in data[i].tolist() if t != tokenizer.eod]) for i in range(len(data))]


@pytest.fixture
def hostile(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.txt").write_text("Hello world.\nSecond line.\n\n\n\nNew doc here.\n" * 3)  # blank lines end documents
    lines = [json.dumps({"text": d}) for d in DOCS] + [
        "not json",
        json.dumps({"other": 1}),
        json.dumps({"text": DOCS[1]}),
    ]
    (src / "b.jsonl").write_text("\n".join(lines) + "\n\n")
    with gzip.open(src / "c.jsonl.gz", "wt") as f:
        f.writelines(json.dumps({"text": f"gz doc {i} " * 10}) + "\n" for i in range(20))
    raw = (src / "c.jsonl.gz").read_bytes()
    (src / "d.jsonl.gz").write_bytes(raw[: len(raw) // 2])  # cut short
    (src / "e.bin").write_bytes(b"\x00\x01\x02" * 100)  # binary
    (src / "f.txt").write_bytes(b"caf\xe9 latin-1 text\n")  # not UTF-8
    (src / "g.txt").write_text("")
    pq.write_table(pa.table({"text": [f"parquet doc {i} " * 8 for i in range(30)]}), src / "h.parquet")
    pq.write_table(pa.table({"body": ["x"]}), src / "i.parquet")  # no text column
    (src / "j.txt").write_text("x" * (READ_LIMIT * 2 + 10) + "\n")  # a 2 MiB line
    return src


def test_hostile_inputs_are_counted_not_fatal(hostile, tmp_path):
    summary = prepare_corpus(cfg(tmp_path, [hostile], dedupe=True, max_doc_chars=READ_LIMIT), log=lambda *a: None)
    assert summary["skipped"] == {
        "binary_files": 1,
        "blank_lines": 1,
        "empty_file": 1,
        "invalid_json_lines": 1,
        "json_lines_without_text_key_text": 1,
        "long_documents_split": 2,
        "long_lines_split": 1,
        "non_utf8_lines_repaired": 1,
        "parquet_files_without_column_text": 1,
        "truncated_or_corrupt_gzip_files": 1,
    }
    # a.txt: 6 documents, 2 distinct; b.jsonl repeats one; d.jsonl.gz repeats what it kept of c
    kept_gz = summary["duplicates_removed"] - 4 - 1
    assert kept_gz >= 1
    assert summary["documents"] == 2 + 40 + 20 + 1 + 30 + 3  # a, b, c, f, h, j (2 MiB cut in 1 MiB pieces)
    on_disk = json.loads((tmp_path / "out" / "corpus.summary.json").read_text())
    assert on_disk["documents"] == summary["documents"] and on_disk["tokens"] == summary["tokens"] > 0
    assert len(IndexedDataset(str(tmp_path / "out" / "corpus"))) == summary["documents"]


def test_one_and_two_workers_write_the_same_bytes(hostile, tmp_path):
    one = prepare_corpus(cfg(tmp_path / "w1", [hostile], workers=1, batch_docs=7), log=lambda *a: None)
    two = prepare_corpus(cfg(tmp_path / "w2", [hostile], workers=2, batch_docs=7), log=lambda *a: None)
    for ext in ("bin", "idx"):  # (the tokenizer files differ only in the output path they record)
        a, b = (tmp_path / w / "out" / f"corpus.{ext}" for w in ("w1", "w2"))
        assert a.read_bytes() == b.read_bytes(), ext
    assert (one["documents"], one["tokens"]) == (two["documents"], two["tokens"])


def _hf_tokenizer(path, texts):
    tok = HFBackend(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=500, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    tok.save(str(path))


@pytest.mark.parametrize("kind", ["bpe", "unigram", "char", "sentencepiece", "hf"])
def test_tokens_decode_back_to_the_input(kind, tmp_path):
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    if kind == "sentencepiece":  # an existing .model: the one a bpe run trained
        prepare_corpus(cfg(tmp_path / "first", [src]), log=lambda *a: None)
        tok = TokenizerConfig(kind="sentencepiece", path=str(tmp_path / "first" / "out" / "corpus.tokenizer.model"))
    elif kind == "hf":
        _hf_tokenizer(tmp_path / "tokenizer.json", DOCS)
        tok = TokenizerConfig(kind="hf", path=str(tmp_path / "tokenizer.json"))
    else:
        tok = TokenizerConfig(kind=kind, vocab_size=300)
    summary = prepare_corpus(cfg(tmp_path, [src], tokenizer=tok), log=lambda *a: None)
    saved = tmp_path / "out" / summary["tokenizer"]["file"]
    tokenizer = load_tokenizer(saved)
    assert read_docs(tmp_path / "out" / "corpus", tokenizer) == DOCS
    assert summary["dtype"] == "uint16" and summary["documents"] == len(DOCS)


def test_clear_one_line_errors(tmp_path):
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "only_blank.jsonl").write_text("\n\n")
    (tmp_path / "ok.txt").write_text("some text\n")
    no_eod = tmp_path / "no_eod.json"
    _hf = HFBackend(models.BPE())
    _hf.pre_tokenizer = pre_tokenizers.ByteLevel()
    _hf.train_from_iterator(["abc"], trainers.BpeTrainer(vocab_size=300))
    _hf.save(str(no_eod))
    cases = [
        (cfg(tmp_path, [tmp_path / "empty_dir"]), "matches no files"),
        (cfg(tmp_path, [tmp_path / "*.nothing"]), "matches no files"),
        (cfg(tmp_path, [tmp_path / "only_blank.jsonl"]), "hold no documents"),
        (
            cfg(tmp_path, [tmp_path / "ok.txt"], tokenizer=TokenizerConfig(kind="hf", path=str(no_eod))),
            "has no end-of-document token",
        ),
        (cfg(tmp_path, [tmp_path / "ok.txt"], tokenizer=TokenizerConfig(kind="hf")), "needs tokenizer.path"),
        (cfg(tmp_path, [tmp_path / "ok.txt"], workers=0), "workers=0 must be at least 1"),
    ]
    for config, message in cases:
        with pytest.raises(DataError, match=message) as err:
            prepare_corpus(config, log=lambda *a: None)
        assert "\n" not in str(err.value)
    assert not list((tmp_path / "out").glob("corpus.bin*"))  # nothing half-written


def test_cli_reports_a_bad_input_in_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "launch/prepare_data.py", f"inputs=[{tmp_path}/missing.txt]", f"output={tmp_path}/x"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"bigtrain: error: input '{tmp_path}/missing.txt' matches no files: pass an existing file, a folder with "
        "files or a glob"
    )
    assert "Traceback" not in proc.stderr
