"""sentencepiece tokenizers trained by bigtrain: BPE (default), unigram, or characters.

All three are lossless on their corpus: identity normalization, no dummy prefix, whitespace kept,
newline a user-defined piece. BPE and unigram add byte fallback so unseen characters survive;
`char` is nanoGPT's character vocabulary (plus unk/bos/eos).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import sentencepiece as spm
from tokenizers import Tokenizer as Backend

from bigtrain.data.corpus import DataError

UNK, BOS, EOS = 0, 1, 2


def token_dtype(vocab_size: int) -> type:
    """The .bin token type: uint16 for vocabularies under 2**16 ids, else int32."""
    return np.uint16 if vocab_size < 2**16 else np.int32


class Tokenizer:
    """A sentencepiece `.model`: bigtrain's own (unk 0, bos 1, eos 2) or an existing one such as
    Llama's; the end-of-document token is the model's eos."""

    saved_name = "tokenizer.model"  # its name inside checkpoints and exported folders

    def __init__(self, model_file: str | Path):
        self.path = Path(model_file)
        self.sp = spm.SentencePieceProcessor(model_file=str(model_file))

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    @property
    def eod(self) -> int:
        return self.sp.eos_id() if self.sp.eos_id() >= 0 else EOS

    @property
    def bos(self) -> int:
        return self.sp.bos_id() if self.sp.bos_id() >= 0 else self.eod

    @property
    def eod_token(self) -> str:
        return self.sp.id_to_piece(self.eod)

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.sp.encode(texts, num_threads=os.cpu_count() or 1)

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode([i for i in ids if 0 <= i < self.vocab_size])


def train_tokenizer(docs: list[str], kind: str, vocab_size: int, model_prefix: Path) -> Tokenizer:
    """Train on the documents' lines (newlines become the user-defined piece)."""
    lines = [line for doc in docs for line in doc.split("\n") if line]
    options = dict(
        model_prefix=str(model_prefix),
        model_type=kind,
        normalization_rule_name="identity",
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        split_by_whitespace=kind != "char",
        allow_whitespace_only_pieces=True,
        user_defined_symbols=["\n"],
        unk_id=UNK,
        bos_id=BOS,
        eos_id=EOS,
        pad_id=-1,
        max_sentence_length=1 << 16,
        input_sentence_size=2_000_000,
        shuffle_input_sentence=True,
        num_threads=os.cpu_count() or 1,
        minloglevel=2,
    )
    if kind == "char":
        chars = {c for line in lines for c in line}
        options.update(vocab_size=len(chars) + 4, character_coverage=1.0)  # + "\n", unk, bos, eos
    else:
        options.update(vocab_size=vocab_size, byte_fallback=True, character_coverage=0.9995, hard_vocab_limit=False)
    try:
        spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), **options)
    except RuntimeError as err:
        needed = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", str(err))
        if not needed:
            raise
        raise DataError(
            f"data.vocab_size={vocab_size} is too small for this corpus with {kind}: "
            f"sentencepiece needs at least {needed.group(2)} pieces (256 byte-fallback "
            "pieces, the characters and the specials); raise data.vocab_size"
        ) from None
    return Tokenizer(f"{model_prefix}.model")


EOD_CANDIDATES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|eos|>")


class HFTokenizer:
    """A Hugging Face `tokenizer.json` (GPT-2's, Llama's, a team's own), read with the `tokenizers`
    library from a local path; nothing is downloaded. The end-of-document id is `eod_token`'s, or
    the first of EOD_CANDIDATES the vocabulary has."""

    saved_name = "tokenizer.json"

    def __init__(self, path: str | Path, eod_token: str | None = None):
        self.path = Path(path)
        try:
            self.backend = Backend.from_file(str(self.path))
        except Exception as err:  # the library raises a bare Exception for a malformed file
            raise DataError(f"tokenizer {self.path} is not a Hugging Face tokenizer.json ({err}): pass one") from None
        names = (eod_token,) if eod_token else EOD_CANDIDATES
        found = [(self.backend.token_to_id(n), n) for n in names if n and self.backend.token_to_id(n) is not None]
        if not found:
            raise DataError(
                f"tokenizer {self.path} has no end-of-document token ({', '.join(n for n in names if n)}): "
                "name one with tokenizer.eod_token=<token>"
            )
        self._eod, self.eod_token = found[0]

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def eod(self) -> int:
        return self._eod

    @property
    def bos(self) -> int:
        return self._eod  # GPT-2 style: one special token starts and ends documents

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self.backend.decode([i for i in ids if 0 <= i < self.vocab_size], skip_special_tokens=False)


def load_tokenizer(path: str | Path, eod_token: str | None = None) -> Tokenizer | HFTokenizer:
    """A sentencepiece `.model` or a Hugging Face `tokenizer.json`, by its name."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"tokenizer {path} does not exist: pass a sentencepiece .model or a tokenizer.json")
    if path.suffix == ".json":
        return HFTokenizer(path, eod_token)
    try:
        return Tokenizer(path)
    except (OSError, RuntimeError) as err:
        raise DataError(f"tokenizer {path} is not a sentencepiece model ({err}): pass a .model file") from None
