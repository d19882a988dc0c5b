"""A preprocessed corpus (``seq2seq preprocess``, ``seq2seq_jax.preprocess``): the format and its reader.

A directory ``D`` holds, beside a workdir's ``config.json`` (the resolved config, vocabulary sizes included) and
``tokenizer/``:

    D/train-00000-of-00002.array_record   ArrayRecord shards (``group_size:1``: random access), one record per
    D/train-00001-of-00002.array_record   kept pair: int32 little-endian [len(src), *src, *tgt], i.e. an
                                          ``Example`` (src ends with EOS; tgt has no BOS/EOS)
    D/train.lengths.npy                   int32 [N, 2]: len(src) and len(tgt) of record i, to plan batches
                                          without reading the records
    D/valid-...array_record, D/valid.lengths.npy     the same for the validation pairs, when there are any
    D/valid.pairs.jsonl                   the kept validation pairs' text, one JSON [source, target] per line
                                          (BLEU needs the references)
    D/report.json                         per split, the ``DataReport``: pairs read, kept, dropped, cropped,
                                          lines with invalid UTF-8 replaced, unknown tokens
    D/manifest.json                       written last: format version, per split its shards (file, records,
                                          bytes) and lengths file, the source files (path, bytes) and the data
                                          settings that made the records

``open_corpus`` checks the manifest against the files (every shard present, of its recorded size and record
count) and raises a ``DataError`` naming the file otherwise; ``Corpus.split(name)`` is a random-access sequence
of ``Example`` (``__len__``, ``__getitem__``, ``__getitems__``, ``lengths``) that batching takes in place of a
list. No JAX here: the tokenizing worker processes of ``preprocess`` import this module.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from seq2seq_jax.common.json_files import read_json
from seq2seq_jax.data import DataError, DataReport, Example

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
REPORT_FILE = "report.json"
VALID_PAIRS_FILE = "valid.pairs.jsonl"
SPLITS = ("train", "valid")
# Data settings that do not change the records (how batches are cut, where the corpus is): every other field of
# DataConfig must be the same to reuse a corpus.
BATCHING_FIELDS = ("batch_size", "bucket_width", "tgt_bucket_width", "max_tokens", "seed", "preprocessed_dir")
WRITER_OPTIONS = "group_size:1"  # one record per chunk: reading a record decodes only that record
RECORD_DTYPE = np.dtype("<i4")


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.array_record"


def lengths_name(split: str) -> str:
    return f"{split}.lengths.npy"


def record_settings(data_config) -> dict[str, Any]:
    """The data settings that decide the records (``DataConfig`` without ``BATCHING_FIELDS``), as JSON values."""
    values = {key: value for key, value in data_config.to_dict().items() if key not in BATCHING_FIELDS}
    return json.loads(json.dumps(values))


def encode_record(example: Example) -> bytes:
    """One record: int32 little-endian ``[len(src), *src, *tgt]``."""
    return np.concatenate([[len(example.src)], example.src, example.tgt]).astype(RECORD_DTYPE).tobytes()


def decode_record(record: bytes) -> Example:
    """The ``Example`` of ``encode_record``'s bytes."""
    ids = np.frombuffer(record, dtype=RECORD_DTYPE).astype(np.int32)
    src_len = int(ids[0])
    return Example(ids[1: 1 + src_len], ids[1 + src_len:])


def _array_record_reader(path: Path):
    from array_record.python.array_record_module import ArrayRecordReader

    return ArrayRecordReader(str(path))


class CorpusSplit(Sequence):
    """The ``Example``s of one split, read from its shards on demand through grain's ``ArrayRecordDataSource``
    (opened at the first read, and again after pickling: a process that receives the split opens its own).

    ``lengths``: int32 ``[N, 2]``, ``len(src)`` (EOS included) and ``len(tgt)`` (no BOS/EOS) of each example.
    """

    def __init__(self, name: str, shard_paths: Sequence[Path], lengths: np.ndarray):
        self.name, self.shard_paths, self.lengths = name, list(shard_paths), lengths
        self._source = None

    def _records(self):
        if self._source is None:
            from grain.sources import ArrayRecordDataSource  # imported at the first read: workers never need it

            self._source = ArrayRecordDataSource([str(path) for path in self.shard_paths])
        return self._source

    def __len__(self) -> int:
        return len(self.lengths)

    def _check_index(self, index: int) -> int:
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.name}: index {index} out of range for {len(self)} examples")
        return index % len(self)

    def __getitem__(self, index: int) -> Example:  # type: ignore[override]
        return decode_record(self._records()[self._check_index(int(index))])

    def __getitems__(self, indices: Sequence[int]) -> list[Example]:
        """The examples at ``indices``, in order, read in one call (much cheaper per record than one by one)."""
        wanted = [self._check_index(int(index)) for index in indices]
        return [decode_record(record) for record in self._records().__getitems__(wanted)] if wanted else []

    def __iter__(self) -> Iterator[Example]:
        for start in range(0, len(self), 4096):
            yield from self.__getitems__(range(start, min(start + 4096, len(self))))

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_source": None}

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
        from seq2seq_jax.workdir import Workdir  # brings JAX, which the tokenizing workers do not import

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
        from seq2seq_jax.tokenizer import load_tokenizers

        return load_tokenizers(self.layout.tokenizer_dir)

    def reports(self) -> dict[str, DataReport]:
        """The ``DataReport`` of each split, as ``preprocess`` counted it."""
        values = read_json(self.path / REPORT_FILE, DataError)
        return {name: DataReport.from_dict(report) for name, report in values.items()}

    def valid_pairs(self) -> list[tuple[str, str]]:
        """The text of the kept validation pairs, in the order of the ``valid`` split's records."""
        if not self.has_split("valid"):
            return []
        path = self.path / VALID_PAIRS_FILE
        try:
            with path.open(encoding="utf-8") as handle:
                pairs = [tuple(json.loads(line)) for line in handle]
        except (OSError, ValueError) as error:
            raise DataError(f"{path}: cannot read the validation text: {error}") from None
        if len(pairs) != self.manifest["splits"]["valid"]["records"]:
            raise DataError(f"{path} has {len(pairs)} pairs but the manifest records "
                            f"{self.manifest['splits']['valid']['records']} validation records")
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
           "shard_name", "lengths_name", "FORMAT_VERSION", "BATCHING_FIELDS"]
