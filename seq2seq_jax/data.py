"""Parallel text -> validated pairs -> token ids -> length buckets -> padded numpy batches.

Reading: lines are split on ``\\n`` only (a stray ``\\r`` or U+2028 inside a line never shifts the alignment
of two files; the ``\\r`` of a CRLF ending is removed). Every problem is a ``DataError`` naming the file and
the 1-based line, and nothing is dropped without being counted in a ``DataReport``.

Batching: every batch has exactly ``batch_size`` rows (padding rows fill the last batch of a bucket) and its
lengths rounded up to a multiple of ``bucket_width`` (one for both sides, or ``(source, target)``), so an
epoch produces a small, known set of shapes (``padded_shapes``), i.e. a small number of compiled programs.
With a token budget (``max_tokens > 0``) a batch holds one (source bucket, target bucket) and as many rows as
the budget allows for that bucket (``TokenBudget``); the ``(rows, src, tgt)`` shapes are again known before
training (``batch_shapes``). Batches are planned from the examples' lengths alone (``[n, 2]``, as a
preprocessed corpus stores them) over any random-access source of examples; only the examples of a batch's
rows (with several processes: of this process's rows) are read, by grain, when it is built. Numpy and grain;
no JAX here.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from seq2seq_jax.common.tokens import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from seq2seq_jax.tokenizer import Tokenizer

ENCODING_ERRORS = ("strict", "replace")
UTF8_BOM = b"\xef\xbb\xbf"


class DataError(ValueError):
    """Bad input data; the message names the file and, where there is one, the 1-based line."""


class TextLines(list):
    """The lines of a file (a ``list[str]``) that also remembers where they came from and which lines had
    invalid UTF-8 replaced by U+FFFD (``replaced_line_numbers``, 1-based; empty unless ``"replace"``)."""

    def __init__(self, lines: Sequence[str], path: Path, replaced_line_numbers: Sequence[int] = ()):
        super().__init__(lines)
        self.path = path
        self.replaced_line_numbers = list(replaced_line_numbers)

    @property
    def replaced_lines(self) -> int:
        return len(self.replaced_line_numbers)


class ParallelPairs(list):
    """``list[tuple[str, str]]`` of (source, target) that also counts the lines whose invalid UTF-8 was
    replaced (``replaced_lines``), so that ``encode_pairs`` can report them."""

    def __init__(self, pairs: Sequence[tuple[str, str]], replaced_lines: int = 0, origin: str = ""):
        super().__init__(pairs)
        self.replaced_lines = replaced_lines
        self.origin = origin


def _check_encoding_errors(encoding_errors: str) -> None:
    if encoding_errors not in ENCODING_ERRORS:
        raise ValueError(f"encoding_errors must be one of {ENCODING_ERRORS}, got {encoding_errors!r}")


def _read_raw_lines(path: str | Path) -> list[bytes]:
    """The lines of ``path`` as bytes: split on ``\\n`` only, no extra empty line after a final ``\\n``, one
    trailing ``\\r`` (CRLF) removed per line, a UTF-8 byte order mark at the start removed."""
    return list(_iter_raw_lines(Path(path)))


def _decode_line(path: Path, line_number: int, raw: bytes, encoding_errors: str) -> tuple[str, bool]:
    """``(text, replaced)`` of one raw line: invalid UTF-8 is a ``DataError`` naming the file and line with
    ``"strict"``, U+FFFD with ``"replace"`` (then ``replaced`` is True)."""
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError as error:
        if encoding_errors == "strict":
            raise DataError(f"{path}:{line_number}: invalid UTF-8 at byte {error.start + 1} of the line "
                            f"({raw[error.start:error.end]!r}); fix the file or set "
                            f"data.encoding_errors=replace") from None
        return raw.decode("utf-8", errors="replace"), True


def _decode_lines(path: Path, raw_lines: list[bytes], encoding_errors: str) -> TextLines:
    lines = []
    replaced = []
    for line_number, raw in enumerate(raw_lines, start=1):
        text, was_replaced = _decode_line(path, line_number, raw, encoding_errors)
        lines.append(text)
        if was_replaced:
            replaced.append(line_number)
    return TextLines(lines, path, replaced)


def _iter_raw_lines(path: Path) -> Iterator[bytes]:
    """The lines of ``path`` (``_read_raw_lines``'s rules), read one at a time: binary files split on ``\\n``
    only."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read: {error.strerror}") from None
    with handle:
        for line_number, line in enumerate(handle, start=1):
            if line_number == 1 and line.startswith(UTF8_BOM):
                line = line[len(UTF8_BOM):]
            line = line[:-1] if line.endswith(b"\n") else line
            yield line[:-1] if line.endswith(b"\r") else line


def iter_parallel(src_path: str | Path, tgt_path: str | Path,
                  encoding_errors: str = "strict") -> Iterator[tuple[str, str, bool]]:
    """``(source, target, replaced)`` of two line-aligned files, read line by line in step (``read_parallel``
    without holding the files: memory does not grow with them). ``replaced``: invalid UTF-8 was replaced on
    either side. A file that ends before the other is a ``DataError`` naming both and the line with no
    counterpart, raised when it is reached."""
    _check_encoding_errors(encoding_errors)
    src_path, tgt_path = Path(src_path), Path(tgt_path)
    src_lines, tgt_lines = _iter_raw_lines(src_path), _iter_raw_lines(tgt_path)
    line_number = 0
    while True:
        src_raw, tgt_raw = next(src_lines, None), next(tgt_lines, None)
        line_number += 1
        if src_raw is None and tgt_raw is None:
            return
        if src_raw is None or tgt_raw is None:
            ended, longer = (src_path, tgt_path) if src_raw is None else (tgt_path, src_path)
            raise DataError(f"parallel files differ in line count: {ended} ends after line {line_number - 1} "
                            f"but {longer} goes on: line {line_number} of {longer} has no counterpart")
        source, src_replaced = _decode_line(src_path, line_number, src_raw, encoding_errors)
        target, tgt_replaced = _decode_line(tgt_path, line_number, tgt_raw, encoding_errors)
        yield source, target, src_replaced or tgt_replaced


def read_lines(path: str | Path, encoding_errors: str = "strict") -> TextLines:
    """The lines of a UTF-8 text file (see the module docstring for what counts as a line).

    Invalid UTF-8 raises ``DataError`` naming the file and line with ``"strict"``; with ``"replace"`` it
    becomes U+FFFD and the line numbers are kept in ``replaced_line_numbers``.
    """
    _check_encoding_errors(encoding_errors)
    return _decode_lines(Path(path), _read_raw_lines(path), encoding_errors)


def split_lines(data: bytes, name: str = "<stdin>") -> list[str]:
    """UTF-8 text -> lines, as ``seq2seq translate`` reads them: split on ``\\n`` only, no extra empty line
    after a final newline, one trailing ``\\r`` removed; invalid UTF-8 is an error naming the line."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ValueError(f"{name}:{line}: invalid UTF-8") from None
    if not text:
        return []
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def read_parallel(src_path: str | Path, tgt_path: str | Path,
                  encoding_errors: str = "strict") -> ParallelPairs:
    """(source, target) pairs from two line-aligned files; different line counts are an error naming both
    files and both counts, checked before anything is decoded."""
    _check_encoding_errors(encoding_errors)
    src_raw, tgt_raw = _read_raw_lines(src_path), _read_raw_lines(tgt_path)
    if len(src_raw) != len(tgt_raw):
        raise DataError(f"parallel files differ in line count: {src_path} has {len(src_raw)} lines, "
                        f"{tgt_path} has {len(tgt_raw)} lines")
    src_lines = _decode_lines(Path(src_path), src_raw, encoding_errors)
    tgt_lines = _decode_lines(Path(tgt_path), tgt_raw, encoding_errors)
    replaced = len(set(src_lines.replaced_line_numbers) | set(tgt_lines.replaced_line_numbers))
    return ParallelPairs(list(zip(src_lines, tgt_lines, strict=True)), replaced, f"{src_path} + {tgt_path}")


def check_same_line_count(first_name: str, first: Sequence[str], second_name: str, second: Sequence[str]) -> None:
    """Two line-aligned inputs must have as many lines; otherwise a ``DataError`` naming both, their counts and
    the first line that has no counterpart."""
    if len(first) != len(second):
        longer = first_name if len(first) > len(second) else second_name
        raise DataError(f"{second_name} has {len(second)} lines but {first_name} has {len(first)}: line "
                        f"{min(len(first), len(second)) + 1} of {longer} has no counterpart")


def iter_tsv(path: str | Path, encoding_errors: str = "strict") -> Iterator[tuple[str, str, bool]]:
    """``(source, target, replaced)`` of ``source<TAB>target`` lines, read one at a time; a line without
    exactly one tab is an error naming the file and line."""
    _check_encoding_errors(encoding_errors)
    path = Path(path)
    for line_number, raw in enumerate(_iter_raw_lines(path), start=1):
        line, replaced = _decode_line(path, line_number, raw, encoding_errors)
        tabs = line.count("\t")
        if tabs != 1:
            raise DataError(f"{path}:{line_number}: expected exactly one tab (source<TAB>target), "
                            f"found {tabs}")
        source, target = line.split("\t")
        yield source, target, replaced


def read_tsv(path: str | Path, encoding_errors: str = "strict") -> ParallelPairs:
    """(source, target) pairs from ``source<TAB>target`` lines; a line without exactly one tab is an error."""
    pairs, replaced_lines = [], 0
    for source, target, replaced in iter_tsv(path, encoding_errors):
        pairs.append((source, target))
        replaced_lines += replaced
    return ParallelPairs(pairs, replaced_lines, str(path))


class Example(NamedTuple):
    """One training pair as ids: ``src [src_len] int32`` ends with EOS; ``tgt [tgt_len - 1] int32`` has no
    BOS/EOS (batching adds them)."""

    src: np.ndarray
    tgt: np.ndarray


@dataclasses.dataclass
class DataReport:
    """What ``encode_pairs`` kept, dropped and changed; ``summary()`` is the line the caller prints.

    ``kept_indices`` holds, for each kept example in order, its position in the input pairs.
    """

    name: str
    total: int = 0
    kept: int = 0
    dropped_empty: int = 0
    dropped_long: int = 0
    cropped: int = 0
    replaced_lines: int = 0
    src_tokens: int = 0
    tgt_tokens: int = 0
    src_unk: int = 0
    tgt_unk: int = 0
    max_src_len: int = 0
    max_tgt_len: int = 0
    long_pair_policy: str = "drop"
    kept_indices: list[int] = dataclasses.field(default_factory=list, repr=False)

    def summary(self) -> str:
        parts = [f"{self.name}: {self.total} pairs, {self.kept} kept",
                 f"{self.dropped_empty} dropped (empty source or target)",
                 f"{self.dropped_long} dropped (longer than max_src_len={self.max_src_len} "
                 f"or max_tgt_len={self.max_tgt_len}, EOS included)",
                 f"{self.cropped} cropped",
                 f"{self.replaced_lines} lines with invalid UTF-8 replaced",
                 f"unknown tokens: {self.src_unk}/{self.src_tokens} source, "
                 f"{self.tgt_unk}/{self.tgt_tokens} target"]
        return ", ".join(parts)

    def add(self, other: DataReport) -> None:
        """Add the counts of ``other`` (the report of a further part of the same split) to these."""
        for name in COUNT_FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-able values, ``kept_indices`` left out (``from_dict`` reads it back)."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)
                if field.name != "kept_indices"}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DataReport:
        return cls(**values)


COUNT_FIELDS = ("total", "kept", "dropped_empty", "dropped_long", "cropped", "replaced_lines", "src_tokens",
                "tgt_tokens", "src_unk", "tgt_unk")


def encode_pair(source: str, target: str, src_tokenizer: Tokenizer, tgt_tokenizer: Tokenizer, data_config,
                report: DataReport) -> Example | None:
    """The ``Example`` of one pair, or None when it is dropped: an empty source or target, or longer than
    ``max_src_len`` / ``max_tgt_len`` (counting the EOS on each side) under ``long_pair_policy="drop"`` (with
    ``"crop"`` it is cropped). Adds the pair to ``report``'s counts (all but ``kept_indices``)."""
    max_src, max_tgt = data_config.max_src_len, data_config.max_tgt_len
    report.total += 1
    src_ids, tgt_ids = src_tokenizer.encode(source), tgt_tokenizer.encode(target)
    if not src_ids or not tgt_ids:
        report.dropped_empty += 1
        return None
    if len(src_ids) + 1 > max_src or len(tgt_ids) + 1 > max_tgt:
        if data_config.long_pair_policy != "crop" or max_src < 2 or max_tgt < 2:
            report.dropped_long += 1
            return None
        src_ids, tgt_ids = src_ids[: max_src - 1], tgt_ids[: max_tgt - 1]
        report.cropped += 1
    report.kept += 1
    report.src_tokens += len(src_ids)
    report.tgt_tokens += len(tgt_ids)
    report.src_unk += src_ids.count(UNK_ID)
    report.tgt_unk += tgt_ids.count(UNK_ID)
    return Example(np.array(src_ids + [EOS_ID], dtype=np.int32), np.array(tgt_ids, dtype=np.int32))


def new_report(data_config, name: str, replaced_lines: int = 0) -> DataReport:
    """An empty ``DataReport`` of split ``name`` under ``data_config``'s length limits."""
    return DataReport(name=name, replaced_lines=replaced_lines, max_src_len=data_config.max_src_len,
                      max_tgt_len=data_config.max_tgt_len, long_pair_policy=data_config.long_pair_policy)


def encode_pairs(pairs: Sequence[tuple[str, str]], src_tokenizer: Tokenizer, tgt_tokenizer: Tokenizer,
                 data_config, name: str = "train",
                 replaced_lines: int | None = None) -> tuple[list[Example], DataReport]:
    """Token ids of ``pairs``: ``Example(src_ids + [EOS], tgt_ids)`` as int32 arrays, by ``encode_pair``.

    Pairs with an empty source or target are dropped; pairs longer than ``max_src_len`` / ``max_tgt_len``
    (counting the EOS on each side) are dropped or cropped per ``data_config.long_pair_policy``. Every such
    decision is counted in the returned ``DataReport``; ``replaced_lines`` defaults to the count carried by
    ``ParallelPairs``.
    """
    if replaced_lines is None:
        replaced_lines = getattr(pairs, "replaced_lines", 0)
    report = new_report(data_config, name, replaced_lines)
    examples = []
    for pair_index, (source, target) in enumerate(pairs):
        example = encode_pair(source, target, src_tokenizer, tgt_tokenizer, data_config, report)
        if example is not None:
            report.kept_indices.append(pair_index)
            examples.append(example)
    return examples, report


class Batch(NamedTuple):
    """A padded batch. Padding rows (``index == -1``) have ``src = [EOS]``, ``src_len = 1`` and
    ``tgt_len = 0``, so they add nothing to a loss masked by ``tgt_len``.

    src      [batch, src_len_padded] int32   source ids, each row ending with EOS, then PAD
    src_len  [batch] int32                   real source length (EOS included)
    tgt_in   [batch, tgt_len_padded] int32   BOS y_1 .. y_n, then PAD
    tgt_out  [batch, tgt_len_padded] int32   y_1 .. y_n EOS, then PAD
    tgt_len  [batch] int32                   n + 1 (0 for padding rows)
    index    [batch] int64                   position of the example in the source batched; -1 for padding rows

    ``global_rows``: the rows of the global batch these rows are part of, when they are one process's rows of
    it (``BatchIterator(local_rows=...)``); None when the batch is whole.
    """

    src: np.ndarray
    src_len: np.ndarray
    tgt_in: np.ndarray
    tgt_out: np.ndarray
    tgt_len: np.ndarray
    index: np.ndarray
    global_rows: int | None = None

    def arrays(self) -> dict[str, np.ndarray]:
        """The model's inputs and targets by name (``index`` left out): what the train and eval steps take."""
        return {name: getattr(self, name) for name in ("src", "src_len", "tgt_in", "tgt_out", "tgt_len")}


def round_up(length: int | np.ndarray, multiple: int) -> int | np.ndarray:
    """``length`` rounded up to a multiple of ``multiple`` (the padded size of a bucket)."""
    return -(-length // multiple) * multiple


def example_lengths(examples: Sequence[Example]) -> np.ndarray:
    """``[n, 2] int32``: ``len(src)`` (EOS included) and ``len(tgt)`` (no BOS/EOS) of every example; reads
    each of them once. A preprocessed corpus stores this array, so its batches are planned without reading."""
    lengths = np.empty((len(examples), 2), dtype=np.int32)
    for i, example in enumerate(examples):
        lengths[i] = len(example.src), len(example.tgt)
    return lengths


def _source_lengths(source: Sequence[Example], lengths: np.ndarray | None) -> np.ndarray:
    """``lengths`` checked against ``source``; default ``source.lengths`` where it has them, else computed."""
    if lengths is None:
        lengths = getattr(source, "lengths", None)
    if lengths is None:
        return example_lengths(source)
    lengths = np.asarray(lengths)
    if lengths.shape != (len(source), 2):
        raise DataError(f"lengths of shape {lengths.shape} do not describe {len(source)} examples "
                        f"(expected ({len(source)}, 2))")
    return lengths


def _lengths(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``src_len [n]`` (EOS included) and ``tgt_len [n]`` (n + 1: the decoder's steps) of ``lengths [n, 2]``,
    int32: the plan of a corpus of millions of pairs is the part of the loader's memory that grows with it."""
    return lengths[:, 0].astype(np.int32), lengths[:, 1].astype(np.int32) + 1


def _positions(order: np.ndarray) -> np.ndarray:
    """Example indices in the plan's dtype: int32 (half the memory) while they fit."""
    return order.astype(np.int32) if len(order) < 2 ** 31 else order


BucketWidth = int | tuple[int, int]  # one width for both sides, or (source, target)


def _widths(bucket_width: BucketWidth) -> tuple[int, int]:
    """``(source, target)`` padding multiples of ``bucket_width``."""
    return (bucket_width, bucket_width) if isinstance(bucket_width, int) else tuple(bucket_width)


def _plan_batches(order: np.ndarray, src_len: np.ndarray, tgt_len: np.ndarray, batch_size: int,
                  bucket_width: BucketWidth) -> list[np.ndarray]:
    """Cut ``order`` (example indices) into batches of at most ``batch_size`` indices.

    Examples are grouped by padded source length and, inside a group, stably sorted by padded target length
    before cutting, so that a batch never mixes source buckets. Because the sort keys are bucket sizes, the
    padded shape of each batch does not depend on ``order``: every permutation gives the same shapes.
    """
    src_width, tgt_width = _widths(bucket_width)
    src_bucket = round_up(src_len[order], src_width)
    tgt_bucket = round_up(tgt_len[order], tgt_width)
    sorted_order = order[np.lexsort((tgt_bucket, src_bucket))]
    sorted_src_bucket = np.sort(src_bucket, kind="stable")
    batches = []
    group_starts = np.flatnonzero(np.diff(sorted_src_bucket, prepend=-1))
    group_ends = np.append(group_starts[1:], len(sorted_order))
    for start, end in zip(group_starts, group_ends, strict=True):
        batches.extend(sorted_order[begin: min(begin + batch_size, end)]
                       for begin in range(start, end, batch_size))
    return batches


@dataclasses.dataclass(frozen=True)
class TokenBudget:
    """Rows per batch under a budget of padded tokens: for a bucket of padded lengths ``(src, tgt)`` the
    largest multiple of ``row_quantum`` (the mesh's data-axis size, so that a batch shards evenly) with
    ``rows * max(src, tgt) <= max_tokens``."""

    max_tokens: int
    row_quantum: int = 1

    def __post_init__(self):
        if self.max_tokens < 1 or self.row_quantum < 1:
            raise ValueError(f"max_tokens and row_quantum must be positive, got {self.max_tokens} and "
                             f"{self.row_quantum}")

    def rows(self, src_padded: int, tgt_padded: int) -> int:
        longer = max(src_padded, tgt_padded)
        rows = self.max_tokens // longer // self.row_quantum * self.row_quantum
        if rows == 0:
            raise DataError(f"data.max_tokens={self.max_tokens} cannot hold {self.row_quantum} row(s) of the "
                            f"bucket of padded lengths source {src_padded}, target {tgt_padded} "
                            f"({self.row_quantum} x {longer} = {self.row_quantum * longer} tokens); use "
                            f"max_tokens >= {self.row_quantum * longer} or a smaller max_src_len/max_tgt_len")
        return rows


def _plan_budget_batches(order: np.ndarray, src_len: np.ndarray, tgt_len: np.ndarray, budget: TokenBudget,
                         bucket_width: BucketWidth) -> list[np.ndarray]:
    """Cut ``order`` (example indices) into batches of one (source bucket, target bucket) each, of at most
    ``budget.rows(bucket)`` indices; as in ``_plan_batches``, the shapes do not depend on ``order``."""
    src_width, tgt_width = _widths(bucket_width)
    src_bucket = round_up(src_len[order], src_width)
    tgt_bucket = round_up(tgt_len[order], tgt_width)
    by_bucket = np.lexsort((tgt_bucket, src_bucket))
    sorted_order, src_bucket, tgt_bucket = order[by_bucket], src_bucket[by_bucket], tgt_bucket[by_bucket]
    changes = (np.diff(src_bucket, prepend=-1) != 0) | (np.diff(tgt_bucket, prepend=-1) != 0)
    group_starts = np.flatnonzero(changes)
    group_ends = np.append(group_starts[1:], len(sorted_order))
    batches = []
    for start, end in zip(group_starts, group_ends, strict=True):
        rows = budget.rows(int(src_bucket[start]), int(tgt_bucket[start]))
        batches.extend(sorted_order[begin: min(begin + rows, end)] for begin in range(start, end, rows))
    return batches


def _batch_shape(indices: np.ndarray, src_len: np.ndarray, tgt_len: np.ndarray, batch_size: int,
                 bucket_width: BucketWidth, budget: TokenBudget | None) -> tuple[int, int, int]:
    """``(rows, src_len_padded, tgt_len_padded)`` of the batch of ``indices``."""
    src_width, tgt_width = _widths(bucket_width)
    src_padded = int(round_up(src_len[indices].max(), src_width))
    tgt_padded = int(round_up(tgt_len[indices].max(), tgt_width))
    rows = batch_size if budget is None else budget.rows(src_padded, tgt_padded)
    return rows, src_padded, tgt_padded


def _plan(order: np.ndarray, src_len: np.ndarray, tgt_len: np.ndarray, batch_size: int,
          bucket_width: BucketWidth, budget: TokenBudget | None) -> list[np.ndarray]:
    """Row batches (``_plan_batches``), or token-budget batches when there is a ``budget``."""
    if budget is None:
        return _plan_batches(order, src_len, tgt_len, batch_size, bucket_width)
    return _plan_budget_batches(order, src_len, tgt_len, budget, bucket_width)


def token_budget(max_tokens: int, row_quantum: int = 1) -> TokenBudget | None:
    """The ``TokenBudget`` of ``data.max_tokens`` (None for 0: batches of ``batch_size`` rows)."""
    return TokenBudget(max_tokens, row_quantum) if max_tokens else None


def _read(source: Sequence[Example], indices: np.ndarray) -> list[Example]:
    """``source[i]`` for each of ``indices``, in order (one ``__getitems__`` call where the source has one,
    as grain's data sources do)."""
    wanted = indices.tolist()
    getitems = getattr(source, "__getitems__", None)
    return list(getitems(wanted)) if getitems is not None else [source[i] for i in wanted]


def _fill_batch(chosen: Sequence[Example], indices: np.ndarray, rows: int, src_width: int, tgt_width: int,
                global_rows: int | None = None) -> Batch:
    """``chosen`` (the examples at ``indices``) padded into a ``Batch`` of ``rows`` rows and padded lengths
    ``src_width`` x ``tgt_width``; the rows after ``len(chosen)`` are padding rows. The ids are copied from one
    flat buffer per side through a row-major mask, not row by row."""
    count = len(chosen)
    src = np.full((rows, src_width), PAD_ID, dtype=np.int32)
    src[:, 0] = EOS_ID
    src_len = np.ones(rows, dtype=np.int32)
    tgt_in = np.full((rows, tgt_width), PAD_ID, dtype=np.int32)
    tgt_out = np.full((rows, tgt_width), PAD_ID, dtype=np.int32)
    tgt_len = np.zeros(rows, dtype=np.int32)
    index = np.full(rows, -1, dtype=np.int64)
    if count:
        n_src = np.fromiter((len(example.src) for example in chosen), dtype=np.int64, count=count)
        n_tgt = np.fromiter((len(example.tgt) for example in chosen), dtype=np.int64, count=count)
        if n_src.max() > src_width or n_tgt.max() + 1 > tgt_width:
            raise DataError(f"examples {indices.tolist()} are longer than their lengths say (padded source "
                            f"{src_width}, target {tgt_width}): the lengths do not belong to this source")
        src[:count][np.arange(src_width) < n_src[:, None]] = np.concatenate([example.src for example in chosen])
        flat_tgt = np.concatenate([example.tgt for example in chosen])
        tgt_in[:count, 0] = BOS_ID
        tgt_in[:count, 1:][np.arange(tgt_width - 1) < n_tgt[:, None]] = flat_tgt
        tgt_out[:count][np.arange(tgt_width) < n_tgt[:, None]] = flat_tgt
        tgt_out[np.arange(count), n_tgt] = EOS_ID
        src_len[:count] = n_src
        tgt_len[:count] = n_tgt + 1
        index[:count] = indices
    return Batch(src, src_len, tgt_in, tgt_out, tgt_len, index, global_rows)


def _make_batch(examples: Sequence[Example], indices: np.ndarray, batch_size: int,
                bucket_width: BucketWidth) -> Batch:
    """Pad ``examples[indices]`` into a ``Batch`` of ``batch_size`` rows (the bucket's rows under a token
    budget), lengths rounded to the bucket."""
    chosen = _read(examples, np.asarray(indices))
    src_multiple, tgt_multiple = _widths(bucket_width)
    src_width = round_up(max(len(example.src) for example in chosen), src_multiple)
    tgt_width = round_up(max(len(example.tgt) + 1 for example in chosen), tgt_multiple)
    return _fill_batch(chosen, np.asarray(indices), batch_size, src_width, tgt_width)


LocalRows = Callable[[int], slice]  # global rows of a batch -> this process's rows of it


READ_SIZE = 2048  # examples read in one call: a store such as ArrayRecord has a large cost per call


class _BatchBuilder:
    """Planned batches (example indices) -> ``Batch``es: each batch's shape from the lengths alone, then only
    the examples of this process's rows (``local_rows``; None: every row) read from ``source``, those of a run
    of consecutive batches (``groups``) in one read."""

    def __init__(self, source: Sequence[Example], src_len: np.ndarray, tgt_len: np.ndarray, batch_size: int,
                 bucket_width: BucketWidth, budget: TokenBudget | None, local_rows: LocalRows | None,
                 read_size: int = READ_SIZE):
        self.source, self.src_len, self.tgt_len = source, src_len, tgt_len
        self.batch_size, self.bucket_width, self.budget = batch_size, bucket_width, budget
        self.local_rows, self.read_size = local_rows, read_size
        self._slices: dict[int, slice] = {}

    def rows_of(self, global_rows: int) -> slice:
        """This process's rows of a batch of ``global_rows`` rows."""
        if self.local_rows is None:
            return slice(0, global_rows)
        if global_rows not in self._slices:
            self._slices[global_rows] = self.local_rows(global_rows)
        return self._slices[global_rows]

    def _part(self, indices: np.ndarray) -> tuple[np.ndarray, int, int, int, int | None]:
        """``(indices of this process's rows, its rows, src width, tgt width, global rows or None)``."""
        rows, src_width, tgt_width = _batch_shape(indices, self.src_len, self.tgt_len, self.batch_size,
                                                  self.bucket_width, self.budget)
        if self.local_rows is None:
            return indices, rows, src_width, tgt_width, None
        mine = self.rows_of(rows)
        return indices[mine], mine.stop - mine.start, src_width, tgt_width, rows

    def groups(self, batches: Sequence[np.ndarray]) -> list[list[np.ndarray]]:
        """``batches`` cut into runs of consecutive batches that read at least ``read_size`` examples here
        (the last run may read fewer)."""
        groups, current, count = [], [], 0
        for indices in batches:
            current.append(indices)
            count += len(self._part(indices)[0])
            if count >= self.read_size:
                groups.append(current)
                current, count = [], 0
        if current:
            groups.append(current)
        return groups

    def __call__(self, batches: Sequence[np.ndarray]) -> list[Batch]:
        """The ``Batch`` of each of ``batches``, their examples read in one call."""
        parts = [self._part(indices) for indices in batches]
        examples = _read(self.source, np.concatenate([part[0] for part in parts]))
        built, start = [], 0
        for local, rows, src_width, tgt_width, global_rows in parts:
            built.append(_fill_batch(examples[start: start + len(local)], local, rows, src_width, tgt_width,
                                     global_rows))
            start += len(local)
        return built


def _check_batching(batch_size: int, bucket_width: BucketWidth) -> None:
    if batch_size < 1 or min(_widths(bucket_width)) < 1:
        raise ValueError(f"batch_size and bucket_width must be positive, got {batch_size} and {bucket_width}")


def batch_shapes(examples: Sequence[Example], batch_size: int, bucket_width: BucketWidth, max_tokens: int = 0,
                 row_quantum: int = 1, lengths: np.ndarray | None = None) -> set[tuple[int, int, int]]:
    """The ``(rows, src_len_padded, tgt_len_padded)`` shapes that every training epoch (``BatchIterator``)
    and ``eval_batches`` produce for ``examples``: rows are ``batch_size``, or with ``max_tokens`` those of
    each bucket's ``TokenBudget``. Raises ``DataError`` when the budget cannot hold a bucket that occurs.
    ``lengths`` as in ``BatchIterator`` (given, or the source's own, no example is read)."""
    _check_batching(batch_size, bucket_width)
    if not len(examples):
        return set()
    budget = token_budget(max_tokens, row_quantum)
    src_len, tgt_len = _lengths(_source_lengths(examples, lengths))
    batches = _plan(_positions(np.arange(len(examples))), src_len, tgt_len, batch_size, bucket_width, budget)
    return {_batch_shape(b, src_len, tgt_len, batch_size, bucket_width, budget) for b in batches}


def padded_shapes(examples: Sequence[Example], batch_size: int, bucket_width: BucketWidth, max_tokens: int = 0,
                  row_quantum: int = 1, lengths: np.ndarray | None = None) -> set[tuple[int, int]]:
    """The ``(src_len_padded, tgt_len_padded)`` shapes of ``batch_shapes`` (rows left out)."""
    return {shape[1:] for shape in batch_shapes(examples, batch_size, bucket_width, max_tokens, row_quantum,
                                                lengths)}


class BatchIterator:
    """Endless training batches, epoch after epoch, over any random-access ``source`` of examples
    (``len(source)``, ``source[i] -> Example``: a list, or a preprocessed corpus split).

    Each epoch: a permutation drawn from ``(seed, epoch)``, examples grouped into length buckets (by source
    length first, then target length; see ``_plan_batches``), batches cut inside buckets, the batch order
    shuffled. The plan needs only ``lengths [n, 2] int32`` (``len(src)`` with EOS, ``len(tgt)`` without
    BOS/EOS; default ``source.lengths`` where the source has them, else read from every example once): the
    iterator keeps no examples, and reads those of a batch when it builds it. ``state()`` / ``restore(state)``
    resume the exact sequence of batches. With ``max_tokens`` (0: off) the batches are those of a
    ``TokenBudget`` of ``max_tokens`` padded tokens and ``row_quantum`` rows.

    ``local_rows`` (e.g. ``functools.partial(parallel.process_rows, sharding)``) makes each batch only this
    process's rows of the global batch (``Batch.global_rows`` says how many the global batch has), reading only
    their examples, with the global batch's padded lengths: every process plans the same global batches and
    builds its own part. Batches are built by grain (``MapDataset`` over the epoch's plan) in groups of
    consecutive batches whose examples are read in one call (about ``READ_SIZE``), with ``read_threads``
    background threads and ``prefetch`` groups built ahead (0 and 0: built when asked for).

    ``epoch`` is the epoch the next batch comes from (0-based; it advances as soon as an epoch's last batch is
    given) and ``position`` the number of that epoch's batches already given.
    """

    def __init__(self, source: Sequence[Example], batch_size: int, bucket_width: BucketWidth, seed: int,
                 max_tokens: int = 0, row_quantum: int = 1, lengths: np.ndarray | None = None,
                 local_rows: LocalRows | None = None, read_threads: int = 0, prefetch: int = 0):
        _check_batching(batch_size, bucket_width)
        if not len(source):
            raise DataError("no training examples to batch (every pair was empty or too long?)")
        if read_threads < 0 or prefetch < 0:
            raise ValueError(f"read_threads and prefetch must be >= 0, got {read_threads} and {prefetch}")
        self.source = source
        self.num_examples = len(source)
        self.batch_size = batch_size
        self.bucket_width = _widths(bucket_width)
        self.seed = seed
        self.max_tokens, self.row_quantum = max_tokens, row_quantum if max_tokens else 1
        self.read_threads, self.prefetch = read_threads, prefetch
        self._budget = token_budget(max_tokens, row_quantum)
        self.lengths = _source_lengths(source, lengths)
        self._src_len, self._tgt_len = _lengths(self.lengths)
        self._build = _BatchBuilder(source, self._src_len, self._tgt_len, batch_size, self.bucket_width,
                                    self._budget, local_rows)
        self.epoch = 0
        self.position = 0
        self._plan = self._epoch_plan(0)
        self._groups = None  # grain's iterator over the rest of the epoch in groups, opened by __next__
        self._built: collections.deque[Batch] = collections.deque()  # the current group's batches not yet given

    def _epoch_plan(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        batches = _plan(_positions(rng.permutation(self.num_examples)), self._src_len, self._tgt_len, self.batch_size,
                        self.bucket_width, self._budget)
        return [batches[i] for i in rng.permutation(len(batches))]

    def _open(self):
        """grain's iterator over the batches of ``self._plan`` from ``self.position`` on, in groups read at once
        (``_BatchBuilder.groups``)."""
        import grain

        options = grain.ReadOptions(num_threads=self.read_threads, prefetch_buffer_size=self.prefetch)
        groups = self._build.groups(self._plan[self.position:])
        return iter(grain.MapDataset.source(groups).map(self._build).to_iter_dataset(options))

    def close(self) -> None:
        """Stop building batches ahead (``__next__`` opens a new reader)."""
        if self._groups is not None:
            self._groups.close()
        self._groups, self._built = None, collections.deque()

    @property
    def batches_per_epoch(self) -> int:
        return len(self._plan)

    def padded_shapes(self) -> set[tuple[int, int]]:
        return {shape[1:] for shape in self.batch_shapes()}

    def batch_shapes(self) -> set[tuple[int, int, int]]:
        return batch_shapes(self.source, self.batch_size, self.bucket_width, self.max_tokens, self.row_quantum,
                            self.lengths)

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> Batch:
        if not self._built:
            if self._groups is None:
                self._groups = self._open()
            self._built.extend(next(self._groups))
        batch = self._built.popleft()
        self.position += 1
        if self.position == len(self._plan):
            self.close()
            self.epoch, self.position = self.epoch + 1, 0
            self._plan = self._epoch_plan(self.epoch)
        return batch

    def _settings(self) -> dict[str, Any]:
        """What must match on ``restore``: the same examples batched the same way."""
        return {"seed": self.seed, "num_examples": self.num_examples, "batch_size": self.batch_size,
                "bucket_width": list(self.bucket_width), "max_tokens": self.max_tokens,
                "row_quantum": self.row_quantum}

    def state(self) -> dict[str, Any]:
        """JSON-able position: ``epoch``, ``position``, and what must match on ``restore`` (the token budget's
        ``max_tokens`` and ``row_quantum`` only when there is one, so that row batching's state is as before)."""
        settings = self._settings()
        if not self.max_tokens:
            del settings["max_tokens"], settings["row_quantum"]
        return {"epoch": self.epoch, "position": self.position, **settings}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (of an iterator over the same examples and settings)."""
        saved_state = dict(state)
        if "bucket_width" in saved_state:  # an int in runs saved before targets could have their own width
            saved_state["bucket_width"] = list(_widths(saved_state["bucket_width"]))
        saved_state.setdefault("max_tokens", 0)  # row batching (and runs saved before token budgets)
        saved_state.setdefault("row_quantum", 1)
        settings = self._settings()
        for key, value in settings.items():
            if key in saved_state and saved_state[key] != value:
                saved = state.get(key, saved_state[key])
                raise DataError(f"cannot restore the data iterator: saved {key}={saved} but this run has "
                                f"{key}={value} (the training data or data settings changed)")
        epoch, position = int(state["epoch"]), int(state["position"])
        plan = self._epoch_plan(epoch)
        if not 0 <= position < len(plan):
            raise DataError(f"cannot restore the data iterator: position {position} is outside epoch {epoch} "
                            f"of {len(plan)} batches")
        self.close()
        self.epoch, self.position, self._plan = epoch, position, plan


def eval_batches(examples: Sequence[Example], batch_size: int, bucket_width: BucketWidth, max_tokens: int = 0,
                 row_quantum: int = 1, lengths: np.ndarray | None = None,
                 local_rows: LocalRows | None = None) -> Iterator[Batch]:
    """One pass over ``examples``, each exactly once, grouped by length; ``Batch.index`` gives positions in
    ``examples`` (-1 for padding rows). Shapes are those of ``batch_shapes`` (same arguments); ``lengths`` and
    ``local_rows`` as in ``BatchIterator``."""
    _check_batching(batch_size, bucket_width)
    if not len(examples):
        return
    budget = token_budget(max_tokens, row_quantum)
    src_len, tgt_len = _lengths(_source_lengths(examples, lengths))
    build = _BatchBuilder(examples, src_len, tgt_len, batch_size, bucket_width, budget, local_rows)
    batches = _plan(_positions(np.arange(len(examples))), src_len, tgt_len, batch_size, bucket_width, budget)
    for group in build.groups(batches):
        yield from build(group)


def source_batches(src_id_lists: Sequence[Sequence[int]], batch_size: int,
                   bucket_width: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Batches of sources to translate: ``(src [batch, src_len_padded] int32, src_len [batch] int32,
    index [batch] int64)``.

    ``src_id_lists`` are token ids without EOS (EOS is appended; an empty line becomes ``[EOS]``). Every input
    appears exactly once, sorted by length; ``index`` is its position in ``src_id_lists`` (-1 for padding
    rows, which are ``[EOS]`` of length 1), so the caller restores the input order.
    """
    _check_batching(batch_size, bucket_width)
    lengths = np.fromiter((len(ids) + 1 for ids in src_id_lists), dtype=np.int64, count=len(src_id_lists))
    order = np.argsort(lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        indices = order[start: start + batch_size]
        width = int(round_up(lengths[indices].max(), bucket_width))
        src = np.full((batch_size, width), PAD_ID, dtype=np.int32)
        src[:, 0] = EOS_ID
        src_len = np.ones(batch_size, dtype=np.int32)
        index = np.full(batch_size, -1, dtype=np.int64)
        for row, source_index in enumerate(indices):
            ids = list(src_id_lists[source_index])
            src[row, : len(ids) + 1] = ids + [EOS_ID]
            src_len[row] = len(ids) + 1
            index[row] = source_index
        yield src, src_len, index
