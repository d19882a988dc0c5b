"""Text files -> lines and (source, target) pairs, checked.

Lines are split on ``\\n`` only (a stray ``\\r`` or U+2028 inside a line never shifts the alignment of two
files; the ``\\r`` of a CRLF ending is removed). Every problem is a ``DataError`` naming the file and the
1-based line; with ``encoding_errors="replace"`` undecodable bytes become U+FFFD and the read result counts
the lines so changed. Standard library only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path

ENCODING_ERRORS = ("strict", "replace")
UTF8_BOM = b"\xef\xbb\xbf"


class DataError(ValueError):
    """Bad input data; the message names the file and, where there is one, the 1-based line."""


@dataclasses.dataclass
class TextLines:
    """The ``lines`` of the file at ``path`` and the 1-based numbers of the lines whose invalid UTF-8 was
    replaced by U+FFFD (``replaced_line_numbers``; empty unless ``encoding_errors="replace"``)."""

    lines: list[str]
    path: Path
    replaced_line_numbers: list[int] = dataclasses.field(default_factory=list)

    @property
    def replaced_lines(self) -> int:
        return len(self.replaced_line_numbers)


@dataclasses.dataclass
class ParallelPairs:
    """(source, target) ``pairs`` read from ``origin`` and how many lines had invalid UTF-8 replaced
    (``replaced_lines``), which ``encode_pairs`` reports."""

    pairs: list[tuple[str, str]]
    replaced_lines: int = 0
    origin: str = ""


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
    return ParallelPairs(list(zip(src_lines.lines, tgt_lines.lines, strict=True)), replaced, f"{src_path} + {tgt_path}")


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

