"""What a run trains and validates on: weighted blends of megatron-core `.bin/.idx` prefixes.

`data.source=prepared` names prefixes written by `bigtrain-prepare`, Megatron-LM's
`preprocess_data.py` or GPT-NeoX's tools, in Megatron-LM's `--data-path` form
(`[0.3, /data/wiki, 0.7, /data/web]`); the built-in corpora (stdlib, text) become a plan with one
train and one validation prefix. Everything that would make megatron-core fail deep inside, or
loop forever, is refused here with one line: a weight of zero or below, a missing prefix, an
`.idx` that does not describe its `.bin`, token ids the tokenizer does not have, and a split or
component with fewer tokens than one sample.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from megatron.core.datasets.blended_megatron_dataset_config import (
    convert_split_vector_to_split_matrix,
    parse_and_normalize_split,
)
from megatron.core.datasets.indexed_dataset import IndexedDataset

from bigtrain.config.blend import parse_blend
from bigtrain.config.schema import ConfigError, DataConfig
from bigtrain.data.corpus import DataError
from bigtrain.data.files import sha256_file
from bigtrain.data.prepare import Prepared
from bigtrain.data.tokenizer import load_tokenizer

SCAN_CHUNK = 1 << 22  # tokens per read when looking for the largest id
SCAN_LIMIT = 1 << 26  # a prefix with more tokens is checked on 16 evenly spaced chunks


@dataclass(frozen=True)
class Component:
    """One prefix of a split: its weight and how many tokens this split takes from it."""

    prefix: str
    weight: float | None
    tokens: int


@dataclass(frozen=True)
class DataPlan:
    tokenizer: object  # Tokenizer | HFTokenizer: the one that prepared every prefix
    train: tuple[Component, ...]
    val: tuple[Component, ...]
    split: str | None  # "train,val,0" fractions of each train prefix's sequences; None: own prefixes
    cache: Path  # where megatron-core keeps its sample indices
    description: str

    def tokens(self, split: str) -> int:
        return sum(c.tokens for c in getattr(self, split))


def plan_builtin(prepared: Prepared, seq_len: int) -> DataPlan:
    """The cached stdlib/text preparation: its own train and validation prefixes."""
    plan = DataPlan(
        tokenizer=prepared.tokenizer,
        train=(Component(prepared.prefix("train"), None, prepared.tokens("train")),),
        val=(Component(prepared.prefix("val"), None, prepared.tokens("val")),),
        split=None,
        cache=prepared.root / "index-cache",
        description=prepared.meta["corpus"],
    )
    fix = "use a larger corpus, lower model.seq_len, or change data.val_fraction"
    _refuse_short(plan, seq_len, {"train": fix, "val": fix})
    return plan


def plan_prepared(cfg: DataConfig, seq_len: int, cache: Path, check: bool = True) -> DataPlan:
    """Open and check every prefix of data.blend and data.valid_blend (check=False: skip the id
    scans, for ranks that follow one that checked)."""
    train = parse_blend(cfg.blend, "data.blend")
    valid = parse_blend(cfg.valid_blend, "data.valid_blend")
    if not train:
        raise ConfigError("data.source=prepared needs data.blend: pass data.blend=[0.3,/data/a,0.7,/data/b]")
    tokenizer = _tokenizer(cfg, train[0].prefix)
    digest = sha256_file(tokenizer.path)
    opened = {}
    for source in train + valid:
        if source.prefix not in opened:
            opened[source.prefix] = _open(source.prefix, tokenizer, digest, check)
    split = None if valid else f"{1 - cfg.val_fraction:.6f},{cfg.val_fraction:.6f},0"
    if split:
        matrix = convert_split_vector_to_split_matrix(parse_and_normalize_split(split))
        tokens = {s.prefix: _split_tokens(opened[s.prefix], matrix) for s in train}
        train_c = _components(train, [tokens[s.prefix][0] for s in train])
        val_c = _components(train, [tokens[s.prefix][1] for s in train], weights=[c.weight for c in train_c])
    else:
        train_c = _components(train, [_total(opened[s.prefix]) for s in train])
        val_c = _components(valid, [_total(opened[s.prefix]) for s in valid])
    plan = DataPlan(tokenizer, train_c, val_c, split, cache, _describe(train_c, val_c, split))
    more = "give it more data, lower model.seq_len, or "
    if split:
        fixes = {"train": more + "lower data.val_fraction", "val": more + "raise data.val_fraction"}
    else:
        fixes = {"train": more + "remove it from data.blend", "val": more + "remove it from data.valid_blend"}
    _refuse_short(plan, seq_len, fixes)
    return plan


def _components(sources, tokens: list[int], weights: list | None = None) -> tuple[Component, ...]:
    """Unweighted blends of several prefixes take each one in proportion to its tokens."""
    if weights is None:
        weights = [s.weight for s in sources]
        if len(sources) > 1 and weights[0] is None:
            weights = [float(max(n, 1)) for n in tokens]
    return tuple(Component(s.prefix, w, n) for s, w, n in zip(sources, weights, tokens))


def _describe(train, val, split) -> str:
    def mix(components):
        total = sum(c.weight or 1.0 for c in components)
        return ", ".join(f"{100 * (c.weight or 1.0) / total:.3g}% {c.prefix}" for c in components)

    held_out = f"validation {split.split(',')[1]} of each prefix's sequences" if split else f"validation {mix(val)}"
    return f"prepared blend {mix(train)}; {held_out}"


def _tokenizer(cfg: DataConfig, first: str):
    if cfg.tokenizer_path:
        path = Path(cfg.tokenizer_path).expanduser()
    else:
        beside = [Path(first + ext) for ext in (".tokenizer.json", ".tokenizer.model")]
        found = [p for p in beside if p.is_file()]
        if not found:
            raise DataError(
                f"no tokenizer beside {first} (bigtrain-prepare writes {first}.tokenizer.model or .json): pass "
                "data.tokenizer_path=<the .model or tokenizer.json the prefixes were prepared with>"
            )
        path = found[0]
    return load_tokenizer(path, _summary(first).get("tokenizer", {}).get("eod_token"))


def _summary(prefix: str) -> dict:
    """bigtrain-prepare's <prefix>.summary.json, or {} for prefixes written by other tools."""
    try:
        return json.loads(Path(prefix + ".summary.json").read_text())
    except (OSError, ValueError):
        return {}


def _open(prefix: str, tokenizer, digest: str, check: bool) -> IndexedDataset:
    """The prefix's index, after checking that its .bin, .idx and tokenizer belong together."""
    for ext in (".idx", ".bin"):
        if not Path(prefix + ext).is_file():
            raise DataError(
                f"prepared prefix {prefix}: {prefix}{ext} does not exist: fix the path (a prefix is the "
                "path without .bin/.idx) or write it with bigtrain-prepare output=<prefix>"
            )
    try:
        dataset = IndexedDataset(prefix)
    except (AssertionError, ValueError, KeyError, OSError) as err:
        raise DataError(f"{prefix}.idx is not a megatron-core index ({err}): prepare the prefix again") from None
    expected = int(dataset.sequence_lengths.sum(dtype=np.int64)) * np.dtype(dataset.index.dtype).itemsize
    actual = Path(prefix + ".bin").stat().st_size
    if expected != actual:
        raise DataError(
            f"{prefix}.idx describes {expected:,} bytes of tokens but {prefix}.bin has {actual:,}: the files "
            "come from different runs or one is cut short; prepare the prefix again"
        )
    dtype, vocab = np.dtype(dataset.index.dtype), tokenizer.vocab_size
    if dtype.itemsize == 2 and vocab > 2**16:
        raise DataError(
            f"{prefix} holds {dtype.name} tokens, so it was prepared with a vocabulary under 65,536 ids, but "
            f"tokenizer {tokenizer.path} has {vocab:,}: pass the tokenizer it was prepared with (data.tokenizer_path)"
        )
    if check:
        _check_ids(prefix, dataset, tokenizer, digest)
    return dataset


def _check_ids(prefix: str, dataset: IndexedDataset, tokenizer, digest: str) -> None:
    """Same tokenizer file as bigtrain-prepare recorded, else no id beyond the vocabulary."""
    recorded = _summary(prefix).get("tokenizer", {})
    if recorded.get("sha256"):
        if recorded["sha256"] != digest:
            raise DataError(
                f"{prefix} was prepared with another tokenizer ({recorded.get('file')}, "
                f"{recorded.get('vocab_size')} ids) than {tokenizer.path}: pass that one with "
                "data.tokenizer_path, or prepare every prefix of the blend with the same tokenizer"
            )
        return
    tokens = np.memmap(prefix + ".bin", dtype=dataset.index.dtype, mode="r")
    starts = range(0, len(tokens), SCAN_CHUNK)
    if len(tokens) > SCAN_LIMIT:
        starts = np.linspace(0, len(tokens) - SCAN_CHUNK, 16).astype(np.int64)
    largest = max((int(tokens[s : s + SCAN_CHUNK].max()) for s in starts), default=0)
    if largest >= tokenizer.vocab_size:
        raise DataError(
            f"{prefix} holds token id {largest:,} but tokenizer {tokenizer.path} has {tokenizer.vocab_size:,} "
            "ids: pass the tokenizer the prefix was prepared with (data.tokenizer_path)"
        )


def _total(dataset: IndexedDataset) -> int:
    return int(dataset.sequence_lengths.sum(dtype=np.int64))


def _split_tokens(dataset: IndexedDataset, matrix) -> list[int]:
    """Tokens in each split, cut exactly as megatron-core's builder cuts a GPT prefix: by sequences
    (a document per sequence as bigtrain-prepare writes; Megatron-LM may split documents into sentences)."""
    ends = np.concatenate([[0], np.cumsum(dataset.sequence_lengths, dtype=np.int64)])
    n = len(dataset.sequence_lengths)
    counts = []
    for bounds in matrix:
        beg, end = (int(round(b * float(n))) for b in bounds) if bounds else (0, 0)
        counts.append(int(ends[end] - ends[beg]))
    return counts


def _refuse_short(plan: DataPlan, seq_len: int, fix: dict[str, str]) -> None:
    """megatron-core's GPTDataset loops forever on fewer tokens than one sample: refuse first."""
    for split in ("train", "val"):
        for c in getattr(plan, split):
            if c.tokens < seq_len + 1:
                raise DataError(
                    f"the {split} split of {c.prefix} has {c.tokens:,} tokens, fewer than model.seq_len + 1 = "
                    f"{seq_len + 1}: {fix[split]}"
                )


def epoch_samples(components: tuple[Component, ...], seq_len: int) -> int:
    """Samples in one pass over every component (GPTDataset: (tokens - 1) // seq_len each)."""
    return sum(max(1, (c.tokens - 1) // seq_len) for c in components)
