"""A preprocessed corpus (``seq2seq preprocess``) and its reader; the format is in docs/data.md.

A directory ``D`` holds ``config.json``, ``tokenizer/``, per split ArrayRecord shards of the kept pairs (one
record per ``Example``: int32 little-endian ``[len(src), *src, *tgt]``) with ``SPLIT.lengths.npy`` (int32
``[N, 2]``, to plan batches without reading records), ``valid.pairs.jsonl`` (the kept validation text; and
``train.pairs.jsonl`` when made with ``data.subword_alpha``, which samples from the text),
``report.json`` (the ``DataReport`` of each split) and ``manifest.json``, written last.

``open_corpus`` checks the manifest against the files (every shard present, of its recorded size and record
count) and raises a ``DataError`` naming the file otherwise; ``Corpus.split(name)`` is a random-access sequence
of ``Example`` (``__len__``, ``__getitem__``, ``__getitems__``, ``lengths``) that batching takes in place of a
list. No JAX here: the tokenizing worker processes of ``preprocess`` import this module.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from seq2seq_jax.core.encoding import DataReport, Example
from seq2seq_jax.core.json_files import read_json
from seq2seq_jax.core.reading import DataError

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
REPORT_FILE = "report.json"
VALID_PAIRS_FILE = "valid.pairs.jsonl"
SPLITS = ("train", "valid")  # and with data.corpora, train.NAME and valid.NAME of each corpus
# Data settings that do not change the records (how batches are cut, where the corpus is): every other field of
# DataConfig must be the same to reuse a corpus.
BATCHING_FIELDS = ("batch_size", "bucket_width", "tgt_bucket_width", "max_tokens", "seed", "preprocessed_dir",
                   "sampling_temperature", "subword_alpha", "subword_nbest_size")
# One record per chunk (reading a record decodes only that record), stored as is: compression saves little on
# records of ~100 bytes and makes every read decompress one. Readers read both (a file names its options).
WRITER_OPTIONS = "group_size:1,uncompressed"
RECORD_DTYPE = np.dtype("<i4")


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.array_record"


def lengths_name(split: str) -> str:
    return f"{split}.lengths.npy"


def valid_pairs_name(split: str) -> str:
    """The kept text of a validation split (``valid.pairs.jsonl``, ``valid.NAME.pairs.jsonl``), or of a training
    split made for subword sampling (``train.pairs.jsonl``)."""
    return f"{split}.pairs.jsonl"


def is_train_split(name: str) -> bool:
    return name == "train" or name.startswith("train.")


def is_valid_split(name: str) -> bool:
    return name == "valid" or name.startswith("valid.")


def record_settings(data_config) -> dict[str, Any]:
    """The data settings that decide the records (``DataConfig`` without ``BATCHING_FIELDS``), as JSON values."""
    values = {key: value for key, value in data_config.to_dict().items() if key not in BATCHING_FIELDS}
    return json.loads(json.dumps(values))


def encode_record(example: Example) -> bytes:
    """One record: int32 little-endian ``[len(src), *src, *tgt]``."""
    return np.concatenate([[len(example.src)], example.src, example.tgt]).astype(RECORD_DTYPE).tobytes()


def decode_record(record: bytes) -> Example:
    """The ``Example`` of ``encode_record``'s bytes."""
    return decode_records([record])[0]


def decode_records(records: Sequence[bytes]) -> list[Example]:
    """The ``Example`` of each of ``encode_record``'s ``records``, decoded together: one join of the bytes and
    one int32 array that every example's ids are views of. A record whose size or length word does not fit the
    format is a ``DataError``."""
    if not records:
        return []
    sizes = np.fromiter(map(len, records), dtype=np.int64, count=len(records))
    if np.any(sizes % RECORD_DTYPE.itemsize) or np.any(sizes == 0):
        bad = int(np.flatnonzero((sizes % RECORD_DTYPE.itemsize) | (sizes == 0))[0])
        raise DataError(f"record {bad} of a read has {sizes[bad]} bytes: not int32 [len(src), *src, *tgt]")
    ids = np.frombuffer(b"".join(records), dtype=RECORD_DTYPE).astype(np.int32)
    ends = np.cumsum(sizes // RECORD_DTYPE.itemsize)
    starts = ends - sizes // RECORD_DTYPE.itemsize
    src_ends = starts + 1 + ids[starts]
    if np.any(src_ends <= starts) or np.any(src_ends > ends):
        bad = int(np.flatnonzero((src_ends <= starts) | (src_ends > ends))[0])
        raise DataError(f"record {bad} of a read has a source length {ids[starts[bad]]} that does not fit its "
                        f"{ends[bad] - starts[bad] - 1} ids")
    return [Example(ids[start + 1: src_end], ids[src_end: end])
            for start, src_end, end in zip(starts.tolist(), src_ends.tolist(), ends.tolist(), strict=True)]


def _array_record_reader(path: Path):
    from array_record.python.array_record_module import ArrayRecordReader

    return ArrayRecordReader(str(path))


# Random access as grain opens its readers: no read-ahead (records are read at scattered positions).
READER_OPTIONS = "readahead_buffer_size:0"
READER_BUFFER_BYTES = 32768


class CorpusSplit(Sequence):
    """The ``Example``s of one split, read from its shards on demand by ArrayRecord readers (opened at the first
    read, and again after pickling: a process that receives the split opens its own).

    ``lengths``: int32 ``[N, 2]``, ``len(src)`` (EOS included) and ``len(tgt)`` (no BOS/EOS) of each example.
    """

    def __init__(self, name: str, shard_paths: Sequence[Path], lengths: np.ndarray):
        self.name, self.shard_paths, self.lengths = name, list(shard_paths), lengths
        self._readers = None
        self._shard_starts = None  # int64 [shards + 1]: the index of each shard's first record, then N
        self._lock = threading.Lock()

    def _open(self) -> None:
        with self._lock:
            if self._readers is not None:
                return
            from array_record.python.array_record_module import ArrayRecordReader

            readers = [ArrayRecordReader(str(path), options=READER_OPTIONS,
                                         file_reader_buffer_size=READER_BUFFER_BYTES) for path in self.shard_paths]
            counts = [reader.num_records() for reader in readers]
            if sum(counts) != len(self):
                raise DataError(f"{self.name}: the shards hold {sum(counts)} records, the lengths describe "
                                f"{len(self)}")
            self._shard_starts = np.cumsum([0, *counts])
            self._readers = readers

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, index: int) -> Example:  # type: ignore[override]
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[Example]:
        """The examples at ``indices``, in order, read in one call per shard (much cheaper per record than one by
        one) and decoded together (``decode_records``)."""
        wanted = np.asarray(indices, dtype=np.int64).reshape(-1)
        if not len(wanted):
            return []
        outside = (wanted < -len(self)) | (wanted >= len(self))
        if outside.any():
            raise IndexError(f"{self.name}: index {wanted[outside][0]} out of range for {len(self)} examples")
        wanted = wanted % len(self)
        if self._readers is None:
            self._open()
        if len(self._readers) == 1:
            return decode_records(self._readers[0].read(wanted.tolist()))
        shard = np.searchsorted(self._shard_starts, wanted, side="right") - 1
        order = np.argsort(shard, kind="stable")
        records = []
        for index in np.unique(shard).tolist():
            positions = wanted[order[shard[order] == index]] - self._shard_starts[index]
            records += self._readers[index].read(positions.tolist())
        examples = decode_records(records)
        in_order = [None] * len(examples)
        for position, example in zip(order.tolist(), examples, strict=True):
            in_order[position] = example
        return in_order

    def __iter__(self) -> Iterator[Example]:
        for start in range(0, len(self), 4096):
            yield from self.__getitems__(range(start, min(start + 4096, len(self))))

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_readers": None, "_shard_starts": None, "_lock": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    def __repr__(self) -> str:
        return f"CorpusSplit({self.name!r}, {len(self)} examples, {len(self.shard_paths)} shards)"


@dataclasses.dataclass(frozen=True)
class Corpus:
    """A checked preprocessed directory (``open_corpus``): its manifest, splits, config, tokenizers and report."""

    path: Path
    manifest: dict[str, Any]

    @property
    def layout(self):
        """The directory as a ``Workdir`` (its ``config.json`` and ``tokenizer/``)."""
        from seq2seq_jax.training.workdir import Workdir  # brings JAX, which the tokenizing workers do not import

        return Workdir(self.path)

    @property
    def splits(self) -> list[str]:
        return list(self.manifest["splits"])

    def has_split(self, name: str) -> bool:
        return name in self.manifest["splits"]

    def split(self, name: str) -> CorpusSplit:
        """The examples of split ``name`` (``train`` or ``valid``)."""
        if not self.has_split(name):
            raise DataError(f"{self.path}: no {name} split (the corpus has {', '.join(self.splits)})")
        entry = self.manifest["splits"][name]
        lengths = np.load(self.path / entry["lengths"])
        return CorpusSplit(name, [self.path / shard["file"] for shard in entry["shards"]], lengths)

    def config(self):
        """The resolved ``ExperimentConfig`` the corpus was made with (vocabulary sizes included)."""
        return self.layout.load_config()

    def tokenizers(self):
        """The ``(src, tgt)`` tokenizers that made the records."""
        from seq2seq_jax.core.tokenizer import load_tokenizers

        return load_tokenizers(self.layout.tokenizer_dir)

    def reports(self) -> dict[str, DataReport]:
        """The ``DataReport`` of each split, as ``preprocess`` counted it."""
        values = read_json(self.path / REPORT_FILE, DataError)
        return {name: DataReport.from_dict(report) for name, report in values.items()}

    def valid_pairs(self, split: str = "valid") -> list[tuple[str, str]]:
        """The text of the kept validation pairs, in the order of the ``split``'s records (``valid``, or a
        corpus's ``valid.NAME``)."""
        if not self.has_split(split):
            return []
        return self.kept_pairs(split)

    def kept_pairs(self, split: str) -> list[tuple[str, str]]:
        """The text of the pairs of ``split``'s records, in their order: kept for validation splits, and for
        training splits when the corpus was made with subword sampling (``data.subword_alpha``)."""
        path = self.path / valid_pairs_name(split)
        if is_train_split(split) and not path.is_file():
            raise DataError(f"{path} not found: {self.path} was made without data.subword_alpha, so it holds no "
                            "training text to sample segmentations from; preprocess it again with subword_alpha set")
        try:
            with path.open(encoding="utf-8") as handle:
                pairs = [tuple(json.loads(line)) for line in handle]
        except (OSError, ValueError) as error:
            raise DataError(f"{path}: cannot read the text of the {split} pairs: {error}") from None
        if len(pairs) != self.manifest["splits"][split]["records"]:
            raise DataError(f"{path} has {len(pairs)} pairs but the manifest records "
                            f"{self.manifest['splits'][split]['records']} {split} records")
        return pairs


def _check_split(directory: Path, name: str, entry: dict[str, Any]) -> None:
    """Every shard of ``entry`` present, of its recorded size and record count; the lengths of every record."""
    shards = entry["shards"]
    for shard in shards:
        path = directory / shard["file"]
        if not path.is_file():
            raise DataError(f"{path}: missing shard ({len(shards)} {name} shards in {directory / MANIFEST_FILE}); "
                            "preprocess the corpus again")
        size = path.stat().st_size
        if size != shard["bytes"]:
            raise DataError(f"{path}: truncated or changed shard: {size} bytes, {directory / MANIFEST_FILE} "
                            f"records {shard['bytes']}; preprocess the corpus again")
        try:
            reader = _array_record_reader(path)
            records = reader.num_records()
            reader.close()
        except Exception as error:  # the C++ reader's errors carry no type of their own
            raise DataError(f"{path}: unreadable shard: {error}") from None
        if records != shard["records"]:
            raise DataError(f"{path}: {records} records, {directory / MANIFEST_FILE} records {shard['records']}; "
                            "preprocess the corpus again")
    lengths_path = directory / entry["lengths"]
    try:
        lengths = np.load(lengths_path, mmap_mode="r")
    except (OSError, ValueError) as error:
        raise DataError(f"{lengths_path}: cannot read the lengths: {error}") from None
    total = sum(shard["records"] for shard in shards)
    if lengths.shape != (total, 2) or lengths.dtype != np.int32 or entry["records"] != total:
        raise DataError(f"{lengths_path}: int32 lengths of shape {lengths.shape} do not describe the {total} records "
                        f"of the {name} shards")


def open_corpus(path: str | Path) -> Corpus:
    """The corpus in ``path``, checked: a ``DataError`` names a missing manifest (an unfinished directory), a
    missing or truncated shard, or lengths that do not match the records."""
    directory = Path(path)
    manifest_path = directory / MANIFEST_FILE
    if not directory.is_dir():
        raise DataError(f"{directory}: no such directory (make it with seq2seq preprocess)")
    if not manifest_path.is_file():
        raise DataError(f"{manifest_path} not found: {directory} is not a finished preprocessed corpus "
                        "(seq2seq preprocess writes the manifest last)")
    manifest = read_json(manifest_path, DataError)
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{manifest_path}: unsupported format_version "
                        f"{manifest.get('format_version') if isinstance(manifest, dict) else None!r}; "
                        f"this version reads {FORMAT_VERSION}")
    for name, entry in manifest["splits"].items():
        _check_split(directory, name, entry)
    return Corpus(directory, manifest)


__all__ = ["Corpus", "CorpusSplit", "open_corpus", "record_settings", "encode_record", "decode_record",
           "decode_records", "shard_name", "lengths_name", "valid_pairs_name", "is_train_split", "is_valid_split",
           "FORMAT_VERSION", "BATCHING_FIELDS"]
