"""Training on prepared prefixes: weighted blends, splits, determinism, and every hostile input.

The prefixes here are written with megatron-core's `IndexedDatasetBuilder` directly, the way
Megatron-LM's and GPT-NeoX's preprocessing tools write them (no summary, no tokenizer beside
them, several sentences per document), so loading them proves foreign prefixes load as they are.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
from tokenizers import Tokenizer, models, pre_tokenizers

from bigtrain.config import Config, ConfigError, DataConfig, validate
from bigtrain.config.blend import parse_blend
from bigtrain.config.hydra import compose
from bigtrain.data.blend import plan_prepared
from bigtrain.data.corpus import DataError
from bigtrain.data.dataset import Batches, build_datasets

SEQ = 16
EOD = 0


def word_tokenizer(path: Path, size: int) -> Path:
    """A tokenizer.json with `size` ids: <|endoftext|> = 0, then w1 ... w{size-1}."""
    vocab = {"<|endoftext|>": EOD, **{f"w{i}": i for i in range(1, size)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path))
    return path


def write_prefix(prefix: Path, low: int, high: int, docs: int, dtype=np.uint16, seed: int = 0) -> int:
    """Documents of ids in [low, high) ending with EOD, two sentences each; returns the token count."""
    rng = np.random.default_rng(seed)
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=dtype)
    total = 0
    for _ in range(docs):
        n = int(rng.integers(20, 60))
        doc = np.append(rng.integers(low, high, n), EOD).astype(dtype)
        builder.add_document(doc, [n // 2, n + 1 - n // 2])  # Megatron-LM's sentence-split form
        total += n + 1
    builder.finalize(f"{prefix}.idx")
    return total


@pytest.fixture(scope="module")
def prefixes(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("prefixes")
    made = {
        "tokenizer": word_tokenizer(root / "tokenizer.json", 300),
        "a": root / "a",  # ids 1..99
        "b": root / "b",  # ids 100..199
        "wide": root / "wide",  # int32, as GPT-NeoX writes for large vocabularies
    }
    made["a_tokens"] = write_prefix(made["a"], 1, 100, 300, seed=1)
    made["b_tokens"] = write_prefix(made["b"], 100, 200, 300, seed=2)
    write_prefix(made["wide"], 200, 300, 100, dtype=np.int32, seed=3)
    return made


def data_cfg(prefixes, blend, **kw) -> DataConfig:
    return DataConfig(source="prepared", blend=tuple(blend), tokenizer_path=str(prefixes["tokenizer"]), **kw)


def source_of(sample: dict) -> str:
    """Which prefix a sample came from, by its ids (EOD aside)."""
    ids = sample["tokens"].numpy()
    ids = ids[ids != EOD]
    return {0: "a", 1: "b", 2: "wide"}[int(ids.max()) // 100]


def test_blend_proportions_are_within_one_percent_of_the_weights(prefixes, tmp_path, world1):
    cfg = data_cfg(prefixes, [0.3, str(prefixes["a"]), 0.7, str(prefixes["b"])])
    plan = plan_prepared(cfg, SEQ, tmp_path / "cache")
    train, val = build_datasets(plan, SEQ, seed=5, train_samples=10_000)
    counts = {"a": 0, "b": 0}
    for i in range(10_000):
        counts[source_of(train[i])] += 1
    assert abs(counts["a"] / 10_000 - 0.3) < 0.01, counts
    # validation holds out the last 10% of each prefix's documents, blended by the same weights
    assert plan.split is not None and {source_of(val[i]) for i in range(len(val))} == {"a", "b"}


def test_validation_from_its_own_prefixes(prefixes, tmp_path, world1):
    cfg = data_cfg(prefixes, [str(prefixes["a"])], valid_blend=(str(prefixes["b"]),))
    plan = plan_prepared(cfg, SEQ, tmp_path)
    train, val = build_datasets(plan, SEQ, seed=5, train_samples=64)
    assert plan.split is None and plan.tokens("train") == prefixes["a_tokens"]
    assert {source_of(train[i]) for i in range(64)} == {"a"}
    assert {source_of(val[i]) for i in range(len(val))} == {"b"}
    assert len(val) == (prefixes["b_tokens"] - 1) // SEQ  # one pass over the validation prefix


def test_unweighted_prefixes_mix_by_their_token_counts(prefixes, tmp_path, world1):
    plan = plan_prepared(data_cfg(prefixes, [str(prefixes["a"]), str(prefixes["b"])]), SEQ, tmp_path)
    share = plan.train[0].weight / (plan.train[0].weight + plan.train[1].weight)
    assert share == pytest.approx(plan.train[0].tokens / plan.tokens("train"))
    assert plan.tokens("train") + plan.tokens("val") == prefixes["a_tokens"] + prefixes["b_tokens"]


def test_split_token_counts_are_the_documents_megatron_uses(prefixes, tmp_path, world1):
    """The too-short check counts exactly the sequences GPTDataset's split takes."""
    plan = plan_prepared(data_cfg(prefixes, [str(prefixes["a"])], val_fraction=0.25), SEQ, tmp_path)
    train, val = build_datasets(plan, SEQ, seed=5, train_samples=100)
    for dataset, component in ((train, plan.train[0]), (val, plan.val[0])):
        assert int(dataset.dataset.sequence_lengths[dataset.indices].sum()) == component.tokens  # split's sequences
    assert plan.tokens("train") + plan.tokens("val") == prefixes["a_tokens"]


def test_samples_are_the_same_across_runs_and_data_parallel_sizes(prefixes, tmp_path, world1):
    cfg = data_cfg(prefixes, [0.5, str(prefixes["a"]), 0.5, str(prefixes["b"])])
    first, _ = build_datasets(plan_prepared(cfg, SEQ, tmp_path / "one"), SEQ, seed=7, train_samples=256)
    second, _ = build_datasets(plan_prepared(cfg, SEQ, tmp_path / "two"), SEQ, seed=7, train_samples=256)
    global_batch, micro = 8, 2
    for step in range(4):
        whole = Batches(first, global_batch, micro, 1, 0)
        again = Batches(second, global_batch, micro, 1, 0)
        for m in range(whole.micro_steps):
            assert np.array_equal(whole.get(step, m).tokens, again.get(step, m).tokens)  # same on another run
        one = np.concatenate([whole.get(step, m).tokens.numpy() for m in range(whole.micro_steps)])
        ranks = [Batches(first, global_batch, micro, 2, r) for r in range(2)]
        shares = [[i for m in range(r.micro_steps) for i in r.indices(step, m)] for r in ranks]
        assert not set(shares[0]) & set(shares[1])  # disjoint
        assert sorted(shares[0] + shares[1]) == list(range(step * global_batch, (step + 1) * global_batch))
        two = np.concatenate([ranks[r].get(step, m).tokens.numpy() for m in range(2) for r in range(2)])
        assert np.array_equal(one, two)  # 1 vs 2 data-parallel ranks: the same samples, in order


def test_batches_equal_megatrons_own_samples_blended_single_and_padded(prefixes, tmp_path, world1):
    """Batches reads megatron's sample indices directly (one copy into the batch, tokens and labels
    as views): every sample equals what GPTDataset.__getitem__ returns, blended or not, and a
    padded sample is masked and zeroed as megatron masks it."""
    import torch  # noqa: PLC0415

    cfg = data_cfg(prefixes, [0.3, str(prefixes["a"]), 0.7, str(prefixes["b"])])
    blended, _ = build_datasets(plan_prepared(cfg, SEQ, tmp_path / "blend"), SEQ, seed=3, train_samples=96)
    single, _ = build_datasets(
        plan_prepared(data_cfg(prefixes, [str(prefixes["a"])]), SEQ, tmp_path / "one"), SEQ, 3, 96
    )
    for dataset in (blended, single):
        batches = Batches(dataset, 8, 4, 1, 0)
        for step in range(6):
            for m in range(2):
                got = batches.get(step, m)
                want = [dataset[i] for i in batches.indices(step, m)]
                for key in ("tokens", "labels", "loss_mask"):
                    assert torch.equal(
                        getattr(got, key), torch.stack([w[key] for w in want]).to(getattr(got, key).dtype)
                    )
                assert got.tokens.data_ptr() == got.text.data_ptr()  # a view, not a copy
    part = single.datasets[0] if hasattr(single, "datasets") else single
    real = part._query_document_sample_shuffle_indices

    def padded(index):  # megatron pads a short final sample with its pad id
        text, docs = real(index)
        if index == 5:
            text = text.copy()
            text[SEQ - 4 :] = -1
        return text, docs

    part._query_document_sample_shuffle_indices = padded
    got = Batches(part, 8, 8, 1, 0).get(0, 0)
    want = [part[i] for i in range(8)]
    for key in ("tokens", "labels", "loss_mask"):
        assert torch.equal(getattr(got, key), torch.stack([w[key] for w in want]).to(getattr(got, key).dtype))
    assert got.loss_mask[5].sum() == SEQ - 5 and got.loss_mask.sum() == 8 * SEQ - 5


def test_foreign_prefixes_load_with_an_explicit_tokenizer(prefixes, tmp_path, world1):
    """int32 tokens, sentence-split documents, no summary and no tokenizer beside the prefix."""
    cfg = data_cfg(prefixes, [str(prefixes["wide"]) + ".bin"], val_fraction=0.2)  # a file name works too
    plan = plan_prepared(cfg, SEQ, tmp_path)
    train, _ = build_datasets(plan, SEQ, seed=1, train_samples=32)
    assert all(source_of(train[i]) == "wide" for i in range(32))
    with pytest.raises(DataError, match=r"no tokenizer beside .*wide .*: pass data.tokenizer_path="):
        plan_prepared(DataConfig(source="prepared", blend=(str(prefixes["wide"]),)), SEQ, tmp_path)


def test_blend_from_the_command_line(prefixes):
    cfg = compose(["data=prepared", f"data.blend=[30,{prefixes['a']},70,{prefixes['b']}]"])
    assert [(s.weight, s.prefix) for s in parse_blend(cfg.data.blend, "data.blend")] == [
        (30.0, str(prefixes["a"])),
        (70.0, str(prefixes["b"])),
    ]


@pytest.mark.parametrize(
    "blend,message",
    [
        ([0, "a", 1, "b"], "weight 0 for a must be a number above zero"),
        ([-0.5, "a", 1, "b"], "weight -0.5 for a must be a number above zero"),
        ([0.3, "a", "b"], "is not a blend: give weight, prefix pairs"),
        (["0.3", "a", "0.7"], "is not a blend"),
    ],
)
def test_bad_blends_are_config_errors(blend, message):
    cfg = Config(data=DataConfig(source="prepared", blend=tuple(blend)))
    with pytest.raises(ConfigError, match=message):
        validate(cfg, world_size=1)


def test_prepared_source_needs_a_blend():
    with pytest.raises(ConfigError, match=r"data.source=prepared needs data.blend"):
        validate(Config(data=DataConfig(source="prepared")), world_size=1)


def copy_prefix(src: Path, dst: Path) -> Path:
    for ext in (".bin", ".idx"):
        Path(f"{dst}{ext}").write_bytes(Path(f"{src}{ext}").read_bytes())
    return dst


def test_hostile_prefixes_get_one_line_errors(prefixes, tmp_path):
    a = str(prefixes["a"])

    def refused(blend, message, **kw):
        with pytest.raises(DataError, match=message) as err:
            plan_prepared(data_cfg(prefixes, blend, **kw), SEQ, tmp_path / "cache")
        assert "\n" not in str(err.value)

    refused([str(tmp_path / "missing")], r"missing.idx does not exist: fix the path")
    cut = copy_prefix(prefixes["a"], tmp_path / "cut")
    Path(f"{cut}.bin").write_bytes(Path(f"{cut}.bin").read_bytes()[:-6])
    refused([1, a, 1, str(cut)], r"cut.idx describes .* bytes of tokens but .*cut.bin has")
    garbage = copy_prefix(prefixes["a"], tmp_path / "garbage")
    Path(f"{garbage}.idx").write_bytes(b"not an index at all" * 10)
    refused([str(garbage)], r"garbage.idx is not a megatron-core index")
    small = tmp_path / "small"
    builder = IndexedDatasetBuilder(f"{small}.bin", dtype=np.uint16)
    builder.add_document(np.array([5, 6, 7, EOD], dtype=np.uint16), [4])
    builder.finalize(f"{small}.idx")
    short = r"train split of .*small has \d+ tokens, fewer than model.seq_len \+ 1 = 17: .*lower data.val_fraction"
    refused([1, a, 1, str(small)], short)
    refused([a], r"val split of .*a has \d+ tokens, fewer than .*raise data.val_fraction", val_fraction=0.001)
    refused([a], r"the val split of .*small has 4 tokens.*remove it from data.valid_blend", valid_blend=(str(small),))


def with_tokenizer(prefix: Path, tokenizer: Path) -> DataConfig:
    return DataConfig(source="prepared", blend=(str(prefix),), tokenizer_path=str(tokenizer))


def test_tokenizer_that_does_not_match_the_data_is_refused(prefixes, tmp_path):
    narrow = word_tokenizer(tmp_path / "narrow.json", 150)  # the data holds ids up to 199
    with pytest.raises(DataError, match=r"b holds token id 19\d but tokenizer .*narrow.json has 150 ids"):
        plan_prepared(with_tokenizer(prefixes["b"], narrow), SEQ, tmp_path)
    huge = word_tokenizer(tmp_path / "huge.json", 70_000)
    with pytest.raises(DataError, match=r"holds uint16 tokens, so it was prepared with a vocabulary under 65,536"):
        plan_prepared(with_tokenizer(prefixes["a"], huge), SEQ, tmp_path)


def test_prefixes_prepared_with_another_tokenizer_are_refused(prefixes, tmp_path):
    """bigtrain-prepare records its tokenizer's hash; a blend of two tokenizers' ids is refused."""
    other = copy_prefix(prefixes["b"], tmp_path / "other")
    Path(f"{other}.summary.json").write_text(
        json.dumps({"tokenizer": {"file": "other.tokenizer.json", "sha256": "0" * 64, "vocab_size": 300}})
    )
    with pytest.raises(DataError, match=r"other was prepared with another tokenizer \(other.tokenizer.json"):
        plan_prepared(data_cfg(prefixes, [1, str(prefixes["a"]), 1, str(other)]), SEQ, tmp_path)


def test_out_of_vocabulary_ids_in_a_batch_stop_with_a_data_error(prefixes, tmp_path, world1):
    """Prefixes too large to scan whole are checked on samples; a batch catches the rest."""
    narrow = word_tokenizer(tmp_path / "narrow.json", 150)
    plan = plan_prepared(with_tokenizer(prefixes["b"], narrow), SEQ, tmp_path, check=False)
    train, _ = build_datasets(plan, SEQ, seed=1, train_samples=16)
    with pytest.raises(DataError, match=r"token id 1\d\d at step 0 is outside the tokenizer's 150 ids"):
        Batches(train, 8, 8, 1, 0, vocab_size=150).get(0, 0)
