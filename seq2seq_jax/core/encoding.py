"""Pairs of text -> ``Example``s of token ids, and the ``DataReport`` of what was kept, dropped or cropped.

An example's source ends with EOS; its target has neither BOS nor EOS (batching adds them). Nothing is
dropped without being counted in the report. Numpy only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from seq2seq_jax.core.reading import ParallelPairs
from seq2seq_jax.core.tokenizer import Tokenizer
from seq2seq_jax.core.tokens import EOS_ID, UNK_ID


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
        src_ids, tgt_ids = src_tokenizer.crop(src_ids, max_src - 1), tgt_tokenizer.crop(tgt_ids, max_tgt - 1)
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


def encode_pairs(pairs: ParallelPairs | Sequence[tuple[str, str]], src_tokenizer: Tokenizer, tgt_tokenizer: Tokenizer,
                 data_config, name: str = "train",
                 replaced_lines: int | None = None) -> tuple[list[Example], DataReport]:
    """Token ids of ``pairs``: ``Example(src_ids + [EOS], tgt_ids)`` as int32 arrays, by ``encode_pair``.

    Pairs with an empty source or target are dropped; pairs longer than ``max_src_len`` / ``max_tgt_len``
    (counting the EOS on each side) are dropped or cropped per ``data_config.long_pair_policy``. Every such
    decision is counted in the returned ``DataReport``; ``replaced_lines`` defaults to the count of
    ``ParallelPairs`` (0 for a plain sequence).
    """
    if isinstance(pairs, ParallelPairs):
        pairs, read_replaced = pairs.pairs, pairs.replaced_lines
    else:
        read_replaced = 0
    if replaced_lines is None:
        replaced_lines = read_replaced
    report = new_report(data_config, name, replaced_lines)
    examples = []
    for pair_index, (source, target) in enumerate(pairs):
        example = encode_pair(source, target, src_tokenizer, tgt_tokenizer, data_config, report)
        if example is not None:
            report.kept_indices.append(pair_index)
            examples.append(example)
    return examples, report


