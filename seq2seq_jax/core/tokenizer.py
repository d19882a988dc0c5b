"""Tokenizers: characters, whitespace words, and sentencepiece unigram / BPE subwords.

Every kind shares the fixed special ids of ``seq2seq_jax.core.tokens`` (pad 0, unk 1, bos 2, eos 3).
``encode`` never adds BOS/EOS (batching does); ``decode`` skips pad/bos/eos wherever they appear and returns
plain text.

On disk a tokenizer named ``name`` is ``{name}.tokenizer.json`` (kind, vocabulary size, and for char/word the
vocabulary itself) plus, for sentencepiece kinds, ``{name}.sentencepiece.model`` whose SHA-256 the JSON
records.
A training run keeps two of them, ``src`` and ``tgt``; with a joint vocabulary both hold the same content so
that loading is the same either way.

This module must not import JAX: ``torch_ref`` loads tokenizers in a process without it.
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sentencepiece

from seq2seq_jax.core.json_files import read_json
from seq2seq_jax.core.segmentation_sampler import SegmentationSampler
from seq2seq_jax.core.tokens import BOS_ID, EOS_ID, PAD_ID, SPECIAL_PIECES, UNK_ID

if TYPE_CHECKING:
    import numpy as np

NUM_SPECIALS = len(SPECIAL_PIECES)
SKIPPED_IN_DECODE = frozenset((PAD_ID, BOS_ID, EOS_ID))

KINDS = ("char", "word", "unigram", "bpe")
SENTENCEPIECE_KINDS = ("unigram", "bpe")
TOKENIZER_FORMAT_VERSION = 1
SENTENCEPIECE_SEED = 1234
WORD_BOUNDARY = "\u2581"  # sentencepiece's "▁": the space before a piece
SIDE_NAMES = ("src", "tgt")


class TokenizerError(ValueError):
    """A tokenizer that cannot be trained, saved or loaded; the message names the file or setting."""


def metadata_path(directory: str | Path, name: str) -> Path:
    """The ``{name}.tokenizer.json`` file that records a tokenizer's kind."""
    return Path(directory) / f"{name}.tokenizer.json"


def sentencepiece_model_path(directory: str | Path, name: str) -> Path:
    return Path(directory) / f"{name}.sentencepiece.model"


def _write_atomically(path: Path, content: bytes) -> None:
    """Write ``content`` to a file beside ``path``, then rename it: a crash never leaves half a file."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(content)
    os.replace(temporary, path)


class Tokenizer:
    """Text <-> token ids. Subclasses: ``VocabularyTokenizer`` (char, word), ``SentencePieceTokenizer``."""

    kind: str

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without BOS/EOS."""
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        """Plain text of ``ids``; pad, bos and eos are skipped wherever they are (no stop at EOS)."""
        raise NotImplementedError

    def sample(self, text: str, alpha: float, nbest_size: int, rng: np.random.Generator) -> list[int]:
        """One segmentation of ``text`` drawn at random from ``rng`` (subword regularization), without BOS/EOS;
        sentencepiece kinds only (``seq2seq_jax.core.segmentation_sampler``)."""
        raise TokenizerError(f"subword sampling needs a sentencepiece tokenizer (unigram or bpe), not {self.kind}")

    def crop(self, ids: list[int], length: int) -> list[int]:
        """``ids`` of an encoded text cut to ``length`` (a long pair under ``long_pair_policy="crop"``)."""
        return ids[:length]

    def piece_id(self, piece: str) -> int | None:
        """The id of ``piece`` when it is one whole entry of the vocabulary (a language tag), else None."""
        return None

    def pieces(self, ids: Iterable[int]) -> list[str]:
        """One display label per id (for attention heatmaps): its text, or "·" for a piece that decodes to
        nothing (a space, a special token)."""
        return [self.decode([i]) or "·" for i in ids]

    def files(self, directory: str | Path, name: str) -> list[Path]:
        """The files ``save(directory, name)`` writes."""
        return [metadata_path(directory, name)]

    def save(self, directory: str | Path, name: str) -> list[Path]:
        """Write this tokenizer under ``directory`` as ``name``; returns the files written."""
        raise NotImplementedError

    def _checked_ids(self, ids: Iterable[int]) -> list[int]:
        checked = [int(i) for i in ids]
        for token_id in checked:
            if not 0 <= token_id < self.vocab_size:
                raise TokenizerError(f"token id {token_id} is outside the {self.kind} vocabulary "
                                     f"of size {self.vocab_size}")
        return checked

    def _write_metadata(self, directory: Path, name: str, extra: dict[str, Any]) -> Path:
        path = metadata_path(directory, name)
        record = {"format_version": TOKENIZER_FORMAT_VERSION, "kind": self.kind, "vocab_size": self.vocab_size, **extra}
        _write_atomically(path, (json.dumps(record, ensure_ascii=False, indent=1) + "\n").encode("utf-8"))
        return path

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, vocab_size={self.vocab_size})"


class VocabularyTokenizer(Tokenizer):
    """Character or whitespace-word tokens looked up in a vocabulary; unknown tokens become UNK.

    ``tokens`` are the regular tokens, ids ``NUM_SPECIALS ...``; the specials are never produced by ``encode``
    except UNK, so a word that happens to read ``<s>`` is an ordinary token.
    """

    UNK_TEXT = "<unk>"

    def __init__(self, kind: str, tokens: Sequence[str]):
        if kind not in ("char", "word"):
            raise TokenizerError(f"VocabularyTokenizer kind must be 'char' or 'word', got {kind!r}")
        if len(set(tokens)) != len(tokens):
            raise TokenizerError(f"{kind} vocabulary has duplicate tokens")
        self.kind = kind
        self.tokens = list(tokens)
        self._id_of = {token: index + NUM_SPECIALS for index, token in enumerate(self.tokens)}

    @classmethod
    def train(cls, kind: str, lines: Iterable[str], min_freq: int, max_vocab_size: int,
              reserved: Sequence[str] = ()) -> VocabularyTokenizer:
        """Vocabulary of the tokens seen at least ``min_freq`` times, the most frequent first (ties in code
        point order), at most ``max_vocab_size`` entries counting the 4 specials; ``reserved`` tokens (language
        tags) come first, whether seen or not."""
        if max_vocab_size <= NUM_SPECIALS + len(reserved):
            raise TokenizerError(f"data.max_vocab_size must exceed the {NUM_SPECIALS} special tokens, "
                                 f"got {max_vocab_size}")
        counts: collections.Counter[str] = collections.Counter()
        for line in lines:
            counts.update(cls._split(kind, line))
        if not counts:
            raise TokenizerError(f"cannot train a {kind} tokenizer: the training text has no tokens")
        frequent = sorted((token for token, count in counts.items() if count >= min_freq),
                          key=lambda token: (-counts[token], token))
        frequent = [token for token in frequent if token not in reserved]
        return cls(kind, list(reserved) + frequent[: max_vocab_size - NUM_SPECIALS - len(reserved)])

    @staticmethod
    def _split(kind: str, text: str) -> list[str]:
        return list(text) if kind == "char" else text.split()

    @property
    def vocab_size(self) -> int:
        return NUM_SPECIALS + len(self.tokens)

    def encode(self, text: str) -> list[int]:
        return [self._id_of.get(token, UNK_ID) for token in self._split(self.kind, text)]

    def piece_id(self, piece: str) -> int | None:
        return self._id_of.get(piece)

    def decode(self, ids: Iterable[int]) -> str:
        pieces = []
        for token_id in self._checked_ids(ids):
            if token_id in SKIPPED_IN_DECODE:
                continue
            pieces.append(self.UNK_TEXT if token_id == UNK_ID else self.tokens[token_id - NUM_SPECIALS])
        return ("" if self.kind == "char" else " ").join(pieces)

    def save(self, directory: str | Path, name: str) -> list[Path]:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        return [self._write_metadata(directory, name, {"tokens": self.tokens})]


class SentencePieceTokenizer(Tokenizer):
    """A sentencepiece unigram or BPE model with byte fallback (no UNK for unseen characters).

    Text is not normalized and whitespace is kept, so ``decode(encode(text)) == text`` for any text.
    """

    def __init__(self, kind: str, model_proto: bytes):
        if kind not in SENTENCEPIECE_KINDS:
            raise TokenizerError(f"SentencePieceTokenizer kind must be one of {SENTENCEPIECE_KINDS}, "
                                 f"got {kind!r}")
        self.kind = kind
        self.model_proto = bytes(model_proto)
        self._processor = sentencepiece.SentencePieceProcessor(model_proto=self.model_proto)
        self._sampler: SegmentationSampler | None = None  # built on the first draw
        expected = {PAD_ID: self._processor.pad_id(), UNK_ID: self._processor.unk_id(),
                    BOS_ID: self._processor.bos_id(), EOS_ID: self._processor.eos_id()}
        if any(want != got for want, got in expected.items()):
            raise TokenizerError(f"sentencepiece model has special ids {list(expected.values())} for "
                                 f"pad/unk/bos/eos; this toolkit needs {list(expected)}")

    @classmethod
    def train(cls, kind: str, lines: Sequence[str], vocab_size: int, character_coverage: float,
              user_symbols: Sequence[str] = (), reserved: Sequence[str] = ()) -> SentencePieceTokenizer:
        """Train on ``lines`` deterministically (one thread, fixed seed): the same text gives the same model.

        ``vocab_size`` is an upper bound (``hard_vocab_limit=False``): a small corpus may give fewer pieces.
        It must leave room for the 4 specials, the 256 byte pieces and every character kept. Each of
        ``user_symbols`` becomes two pieces, the symbol alone and after a word boundary (``▁#Person1#``), so
        that a symbol after a space is one piece, not two. Each of ``reserved`` (language tags) is one piece,
        never split.
        """
        nonempty = [line for line in lines if line]
        if not nonempty:
            raise TokenizerError(f"cannot train a {kind} tokenizer: the training text is empty")
        longest_bytes = max(len(line.encode("utf-8")) for line in nonempty)
        model = io.BytesIO()
        symbols = list(reserved) + [form for symbol in user_symbols for form in (symbol, WORD_BOUNDARY + symbol)
                                    if form not in reserved]
        sentencepiece.set_random_generator_seed(SENTENCEPIECE_SEED)
        try:
            sentencepiece.SentencePieceTrainer.train(
                sentence_iterator=iter(nonempty), model_writer=model, model_type=kind, vocab_size=vocab_size,
                character_coverage=character_coverage, byte_fallback=True, hard_vocab_limit=False,
                pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
                normalization_rule_name="identity", remove_extra_whitespaces=False,
                max_sentence_length=max(4192, longest_bytes + 1), num_threads=1, minloglevel=2,
                **({"user_defined_symbols": symbols} if symbols else {}))
        except RuntimeError as error:
            raise TokenizerError(f"sentencepiece {kind} training failed (data.vocab_size={vocab_size}, "
                                 f"data.character_coverage={character_coverage}): {error}") from None
        return cls(kind, model.getvalue())

    @property
    def vocab_size(self) -> int:
        return self._processor.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self._processor.encode(text, out_type=int)

    def sample(self, text: str, alpha: float, nbest_size: int, rng: np.random.Generator) -> list[int]:
        """Unigram: a segmentation drawn from the ``nbest_size`` best (-1: the whole lattice) with smoothing
        ``alpha``; BPE: BPE-dropout, each merge skipped with probability ``alpha`` (``nbest_size`` unused)."""
        if self._sampler is None:
            self._sampler = SegmentationSampler(self.model_proto)
        return self._sampler.draw(text, alpha, nbest_size, rng)

    def piece_id(self, piece: str) -> int | None:
        token_id = self._processor.piece_to_id(piece)
        return token_id if token_id != UNK_ID and self._processor.id_to_piece(token_id) == piece else None

    def decode(self, ids: Iterable[int]) -> str:
        return self._processor.decode([i for i in self._checked_ids(ids) if i not in SKIPPED_IN_DECODE])

    def files(self, directory: str | Path, name: str) -> list[Path]:
        return [metadata_path(directory, name), sentencepiece_model_path(directory, name)]

    def save(self, directory: str | Path, name: str) -> list[Path]:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        model_path = sentencepiece_model_path(directory, name)
        _write_atomically(model_path, self.model_proto)
        json_path = self._write_metadata(directory, name, {
            "model_file": model_path.name, "model_sha256": hashlib.sha256(self.model_proto).hexdigest()})
        return [json_path, model_path]


def train_tokenizer(data_config, lines: Sequence[str], reserved: Sequence[str] = ()) -> Tokenizer:
    """Train the tokenizer kind ``data_config.tokenizer`` on ``lines``, ``reserved`` pieces (language tags)
    whole entries of its vocabulary."""
    kind = data_config.tokenizer
    if kind in ("char", "word"):
        return VocabularyTokenizer.train(kind, lines, data_config.min_freq, data_config.max_vocab_size, reserved)
    if kind in SENTENCEPIECE_KINDS:
        return SentencePieceTokenizer.train(kind, lines, data_config.vocab_size,
                                            data_config.character_coverage, data_config.user_symbols, reserved)
    raise TokenizerError(f"unknown tokenizer kind {kind!r}; kinds are {KINDS}")


def _read_metadata(directory: str | Path, name: str) -> dict[str, Any]:
    path = metadata_path(directory, name)
    record = read_json(path, TokenizerError, invalid="corrupt tokenizer file")
    if not isinstance(record, dict) or record.get("kind") not in KINDS:
        raise TokenizerError(f"{path}: corrupt tokenizer file: expected an object with 'kind' one of {KINDS}")
    if record.get("format_version") != TOKENIZER_FORMAT_VERSION:
        raise TokenizerError(f"{path}: unsupported tokenizer format_version "
                             f"{record.get('format_version')!r}; this version reads {TOKENIZER_FORMAT_VERSION}")
    return record


def load_tokenizer(directory: str | Path, name: str) -> Tokenizer:
    """The tokenizer saved as ``name`` in ``directory``; a missing or corrupt file is an error naming it."""
    record = _read_metadata(directory, name)
    path = metadata_path(directory, name)
    kind = record["kind"]
    if kind in ("char", "word"):
        tokens = record.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(token, str) for token in tokens):
            raise TokenizerError(f"{path}: corrupt tokenizer file: 'tokens' must be a list of strings")
        tokenizer: Tokenizer = VocabularyTokenizer(kind, tokens)
    else:
        model_path = Path(directory) / str(record.get("model_file", ""))
        try:
            model_proto = model_path.read_bytes()
        except OSError as error:
            raise TokenizerError(f"sentencepiece model {model_path} (named by {path}) cannot be read: "
                                 f"{error.strerror}") from None
        if hashlib.sha256(model_proto).hexdigest() != record.get("model_sha256"):
            raise TokenizerError(f"sentencepiece model {model_path} is corrupt or was replaced: its SHA-256 "
                                 f"differs from the one recorded in {path}")
        try:
            tokenizer = SentencePieceTokenizer(kind, model_proto)
        except RuntimeError as error:
            raise TokenizerError(f"sentencepiece model {model_path} is corrupt: {error}") from None
    if tokenizer.vocab_size != record.get("vocab_size"):
        raise TokenizerError(f"{path}: records vocab_size {record.get('vocab_size')} but the vocabulary "
                             f"has {tokenizer.vocab_size} entries")
    return tokenizer


def build_tokenizers(data_config, src_lines: Sequence[str], tgt_lines: Sequence[str],
                     directory: str | Path) -> tuple[Tokenizer, Tokenizer]:
    """Train the source and target tokenizers (one on both sides with ``joint_vocab``) and save them under
    ``directory`` as ``src`` and ``tgt``. The language tags of ``data_config.corpora`` are reserved pieces of the
    source vocabulary (the joint one)."""
    tags = list(data_config.languages.values())
    if data_config.joint_vocab:
        joint = train_tokenizer(data_config, list(src_lines) + list(tgt_lines), tags)
        src_tokenizer, tgt_tokenizer = joint, joint
    else:
        src_tokenizer = train_tokenizer(data_config, src_lines, tags)
        tgt_tokenizer = train_tokenizer(data_config, tgt_lines)
    src_tokenizer.save(directory, "src")
    tgt_tokenizer.save(directory, "tgt")
    return src_tokenizer, tgt_tokenizer


def load_tokenizers(directory: str | Path) -> tuple[Tokenizer, Tokenizer]:
    """The ``(src, tgt)`` tokenizers saved by ``build_tokenizers``."""
    return load_tokenizer(directory, "src"), load_tokenizer(directory, "tgt")


def tokenizer_files(directory: str | Path) -> list[Path]:
    """Every file of the ``src`` and ``tgt`` tokenizers in ``directory`` (what an export copies)."""
    files = []
    for name in SIDE_NAMES:
        kind = _read_metadata(directory, name)["kind"]
        files.append(metadata_path(directory, name))
        if kind in SENTENCEPIECE_KINDS:
            files.append(sentencepiece_model_path(directory, name))
    return files


def same_tokenizer(first: Tokenizer, second: Tokenizer) -> bool:
    """Whether two tokenizers map text to the same ids: the same kind and the same vocabulary (char, word) or
    the same sentencepiece model (byte for byte)."""
    if type(first) is not type(second) or first.kind != second.kind:
        return False
    if isinstance(first, SentencePieceTokenizer):
        return first.model_proto == second.model_proto
    return first.tokens == second.tokens


def check_shared_tokenizers(models: Sequence[tuple[str, Tokenizer, Tokenizer]]) -> None:
    """An ensemble's models ``(name, src tokenizer, tgt tokenizer)`` must all tokenize like the first; the
    error names both models and the side."""
    first_name, *first_tokenizers = models[0]
    for name, *tokenizers in models[1:]:
        for side, ours, theirs in zip(SIDE_NAMES, first_tokenizers, tokenizers, strict=True):
            if not same_tokenizer(ours, theirs):
                raise TokenizerError(f"an ensemble needs the same tokenizers: the {side} tokenizer of {name} "
                                     f"({theirs!r}) differs from that of {first_name} ({ours!r})")
