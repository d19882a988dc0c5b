"""Examples -> length buckets -> padded numpy batches of a small, known set of shapes.

Every batch has exactly ``batch_size`` rows (padding rows fill the last batch of a bucket) and its lengths
rounded up to a multiple of ``bucket_width`` (one for both sides, or ``(source, target)``), so an epoch
produces a small, known set of shapes, i.e. a small number of compiled programs. With a token budget
(``max_tokens > 0``) a batch holds one (source bucket, target bucket) and as many rows as the budget allows
for it (``TokenBudget``). Batches are planned from the examples' lengths alone (``[n, 2]``, as a
preprocessed corpus stores them); only the examples of a batch's rows are read when it is built. Numpy only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import numpy as np

from seq2seq_jax.core.encoding import Example
from seq2seq_jax.core.reading import DataError
from seq2seq_jax.core.tokens import BOS_ID, EOS_ID, PAD_ID


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


def rows_for(lines: int, batch_size: int) -> int:
    """The rows of a decode batch for an input of ``lines`` lines: ``batch_size``, or for a shorter input the
    power of two that holds it (a one-line input is one row, not ``batch_size`` rows of padding; powers of two
    keep the compiled programs few)."""
    return batch_size if lines >= batch_size else min(batch_size, 1 << max(lines - 1, 0).bit_length())


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


def _plan_batches(order: np.ndarray, src_len: np.ndarray, tgt_len: np.ndarray, batch_size: int,
                  bucket_width: tuple[int, int]) -> list[np.ndarray]:
    """Cut ``order`` (example indices) into batches of at most ``batch_size`` indices.

    Examples are grouped by padded source length and, inside a group, stably sorted by padded target length
    before cutting, so that a batch never mixes source buckets. Because the sort keys are bucket sizes, the
    padded shape of each batch does not depend on ``order``: every permutation gives the same shapes.
    """
    src_width, tgt_width = bucket_width
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
                         bucket_width: tuple[int, int]) -> list[np.ndarray]:
    """Cut ``order`` (example indices) into batches of one (source bucket, target bucket) each, of at most
    ``budget.rows(bucket)`` indices; as in ``_plan_batches``, the shapes do not depend on ``order``."""
    src_width, tgt_width = bucket_width
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


@dataclasses.dataclass(frozen=True)
class BatchPolicy:
    """How examples become batches, built once by the caller (``of(data_config)``) and passed down.

    ``batch_size`` rows per batch, or with ``max_tokens > 0`` the rows of each bucket's ``TokenBudget``
    (multiples of ``row_quantum``); lengths padded to multiples of ``bucket_width`` (one for both sides, or
    ``(source, target)``; kept as a pair).
    """

    batch_size: int
    bucket_width: tuple[int, int]
    max_tokens: int = 0
    row_quantum: int = 1

    def __post_init__(self):
        widths = self.bucket_width
        object.__setattr__(self, "bucket_width", (widths, widths) if isinstance(widths, int) else tuple(widths))
        if self.batch_size < 1 or min(self.bucket_width) < 1:
            raise ValueError(f"batch_size and bucket_width must be positive, got {self.batch_size} and "
                             f"{widths}")
        if not self.max_tokens:
            object.__setattr__(self, "row_quantum", 1)  # rows are batch_size: no quantum to keep
        self.budget  # noqa: B018 - a bad max_tokens or row_quantum fails here, not at the first batch

    @classmethod
    def of(cls, data_config, row_quantum: int = 1) -> BatchPolicy:
        """The policy of ``data_config`` (``batch_size``, ``bucket_widths``, ``max_tokens``)."""
        return cls(data_config.batch_size, data_config.bucket_widths, data_config.max_tokens, row_quantum)

    @property
    def budget(self) -> TokenBudget | None:
        """The ``TokenBudget`` of ``max_tokens`` (None for 0: batches of ``batch_size`` rows)."""
        return TokenBudget(self.max_tokens, self.row_quantum) if self.max_tokens else None

    def plan(self, order: np.ndarray, src_len: np.ndarray, tgt_len: np.ndarray) -> list[np.ndarray]:
        """``order`` (example indices) cut into batches: row batches (``_plan_batches``), or token-budget
        batches (``_plan_budget_batches``)."""
        budget = self.budget
        if budget is None:
            return _plan_batches(order, src_len, tgt_len, self.batch_size, self.bucket_width)
        return _plan_budget_batches(order, src_len, tgt_len, budget, self.bucket_width)

    def shape(self, indices: np.ndarray, src_len: np.ndarray, tgt_len: np.ndarray) -> tuple[int, int, int]:
        """``(rows, src_len_padded, tgt_len_padded)`` of the batch of ``indices``."""
        src_width, tgt_width = self.bucket_width
        src_padded = int(round_up(src_len[indices].max(), src_width))
        tgt_padded = int(round_up(tgt_len[indices].max(), tgt_width))
        budget = self.budget
        rows = self.batch_size if budget is None else budget.rows(src_padded, tgt_padded)
        return rows, src_padded, tgt_padded


def _read(source: Sequence[Example], indices: np.ndarray) -> list[Example]:
    """``source[i]`` for each of ``indices``, in order (one ``__getitems__`` call where the source has one,
    as grain's data sources do)."""
    wanted = indices.tolist()
    getitems = getattr(source, "__getitems__", None)
    return list(getitems(wanted)) if getitems is not None else [source[i] for i in wanted]


def _pack(rows: np.ndarray, pieces: Sequence[np.ndarray], lengths: np.ndarray) -> None:
    """Copy ``pieces[i]`` (of ``lengths[i]`` ids) into the start of ``rows[i]`` (``[n, width]``), for the
    first ``len(pieces)`` rows: one flat buffer through a row-major mask, not row by row."""
    if len(pieces):
        rows[: len(pieces)][np.arange(rows.shape[1]) < lengths[:, None]] = np.concatenate(pieces)


def _fill_batch(chosen: Sequence[Example], indices: np.ndarray, rows: int, src_width: int, tgt_width: int,
                global_rows: int | None = None) -> Batch:
    """``chosen`` (the examples at ``indices``) padded into a ``Batch`` of ``rows`` rows and padded lengths
    ``src_width`` x ``tgt_width``; the rows after ``len(chosen)`` are padding rows."""
    count = len(chosen)
    src = np.full((rows, src_width), PAD_ID, dtype=np.int32)
    src[count:, 0] = EOS_ID
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
        _pack(src, [example.src for example in chosen], n_src)
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
                bucket_width: tuple[int, int]) -> Batch:
    """Pad ``examples[indices]`` into a ``Batch`` of ``batch_size`` rows, lengths rounded to the bucket."""
    chosen = _read(examples, np.asarray(indices))
    src_multiple, tgt_multiple = bucket_width
    src_width = round_up(max(len(example.src) for example in chosen), src_multiple)
    tgt_width = round_up(max(len(example.tgt) + 1 for example in chosen), tgt_multiple)
    return _fill_batch(chosen, np.asarray(indices), batch_size, src_width, tgt_width)


LocalRows = Callable[[int], slice]  # global rows of a batch -> this process's rows of it


READ_SIZE = 2048  # examples read in one call: a store such as ArrayRecord has a large cost per call


class _BatchBuilder:
    """Planned batches (example indices) -> ``Batch``es: each batch's shape from the lengths alone, then only
    the examples of this process's rows (``local_rows``; None: every row) read from ``source``, those of a run
    of consecutive batches (``groups``) in one read."""

    def __init__(self, source: Sequence[Example], src_len: np.ndarray, tgt_len: np.ndarray, policy: BatchPolicy,
                 local_rows: LocalRows | None, read_size: int = READ_SIZE):
        self.source, self.src_len, self.tgt_len, self.policy = source, src_len, tgt_len, policy
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
        rows, src_width, tgt_width = self.policy.shape(indices, self.src_len, self.tgt_len)
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


def batch_shapes(examples: Sequence[Example], policy: BatchPolicy,
                 lengths: np.ndarray | None = None) -> set[tuple[int, int, int]]:
    """The ``(rows, src_len_padded, tgt_len_padded)`` shapes that every training epoch (``BatchIterator``)
    and ``eval_batches`` produce for ``examples`` under ``policy``. Raises ``DataError`` when a token budget
    cannot hold a bucket that occurs. ``lengths`` as in ``BatchIterator`` (given, or the source's own, no
    example is read)."""
    if not len(examples):
        return set()
    src_len, tgt_len = _lengths(_source_lengths(examples, lengths))
    batches = policy.plan(_positions(np.arange(len(examples))), src_len, tgt_len)
    return {policy.shape(indices, src_len, tgt_len) for indices in batches}


def padded_shapes(examples: Sequence[Example], policy: BatchPolicy,
                  lengths: np.ndarray | None = None) -> set[tuple[int, int]]:
    """The ``(src_len_padded, tgt_len_padded)`` shapes of ``batch_shapes`` (rows left out)."""
    return {shape[1:] for shape in batch_shapes(examples, policy, lengths)}


def eval_batches(examples: Sequence[Example], policy: BatchPolicy, lengths: np.ndarray | None = None,
                 local_rows: LocalRows | None = None) -> Iterator[Batch]:
    """One pass over ``examples``, each exactly once, grouped by length; ``Batch.index`` gives positions in
    ``examples`` (-1 for padding rows). Shapes are those of ``batch_shapes``; ``lengths`` and ``local_rows``
    as in ``BatchIterator``."""
    if not len(examples):
        return
    src_len, tgt_len = _lengths(_source_lengths(examples, lengths))
    build = _BatchBuilder(examples, src_len, tgt_len, policy, local_rows)
    for group in build.groups(policy.plan(_positions(np.arange(len(examples))), src_len, tgt_len)):
        yield from build(group)


def source_batches(src_id_lists: Sequence[Sequence[int]], batch_size: int,
                   bucket_width: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Batches of sources to translate: ``(src [batch, src_len_padded] int32, src_len [batch] int32,
    index [batch] int64)``.

    ``src_id_lists`` are token ids without EOS (EOS is appended; an empty line becomes ``[EOS]``). Every input
    appears exactly once, sorted by length; ``index`` is its position in ``src_id_lists`` (-1 for padding
    rows, which are ``[EOS]`` of length 1), so the caller restores the input order.
    """
    if batch_size < 1 or bucket_width < 1:
        raise ValueError(f"batch_size and bucket_width must be positive, got {batch_size} and {bucket_width}")
    lengths = np.fromiter((len(ids) + 1 for ids in src_id_lists), dtype=np.int64, count=len(src_id_lists))
    order = np.argsort(lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        indices = order[start: start + batch_size]
        src = np.full((batch_size, int(round_up(lengths[indices].max(), bucket_width))), PAD_ID, dtype=np.int32)
        src[len(indices):, 0] = EOS_ID
        _pack(src, [np.append(np.asarray(src_id_lists[i], dtype=np.int32), np.int32(EOS_ID)) for i in indices],
              lengths[indices])
        src_len = np.ones(batch_size, dtype=np.int32)
        src_len[: len(indices)] = lengths[indices]
        index = np.full(batch_size, -1, dtype=np.int64)
        index[: len(indices)] = indices
        yield src, src_len, index
