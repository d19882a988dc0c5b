"""Data-to-text input: RDF triples written as a line the model reads, the same at training and decoding time.

A triple set is one line of ``subject | predicate | object`` triples joined by `` <TSP> `` (the WebNLG
layout). ``linearize`` writes it as ``<S> subject <P> predicate <O> object <S> ...``: underscores become spaces,
camelCase predicates are split into lower-case words (``cityServed`` -> ``city served``), an object's enclosing
double quotes are dropped, and the three markers are reserved sentencepiece pieces (``MARKERS``, given to
``data.user_symbols``) so that they are never split. The words are kept as written (cased), so that a
copy-attention model can copy entity names. docs/data-to-text.md says why this form.
"""

from __future__ import annotations

import re

TRIPLE_SEPARATOR = " <TSP> "
FIELD_SEPARATOR = " | "
MARKERS = ("<S>", "<P>", "<O>")

_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


class TripleFormatError(ValueError):
    """A line that is not ``s | p | o`` triples joined by `` <TSP> ``; the message names the file and line."""


def parse_triples(line: str, where: str = "<input>") -> list[tuple[str, str, str]]:
    """``(subject, predicate, object)`` of every triple of ``line``; ``where`` (``file:line``) names it in errors."""
    triples = []
    for number, triple in enumerate(line.strip().split(TRIPLE_SEPARATOR), start=1):
        fields = triple.split(FIELD_SEPARATOR)
        if len(fields) != 3 or not all(field.strip() for field in fields):
            raise TripleFormatError(f"{where}: triple {number} ({triple!r}) is not 'subject | predicate | object'")
        subject, predicate, obj = (field.strip() for field in fields)
        triples.append((subject, predicate, obj))
    return triples


def _words(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    return " ".join(value.replace("_", " ").split())


def _predicate_words(predicate: str) -> str:
    return " ".join(_CAMEL_BOUNDARY.sub(" ", _words(predicate)).lower().split())


def linearize(line: str, where: str = "<input>") -> str:
    """The model's source for one triple-set line: ``<S> subject <P> predicate <O> object`` per triple, in order."""
    if not line.strip():
        return ""
    parts = []
    for subject, predicate, obj in parse_triples(line, where):
        parts.append(f"<S> {_words(subject)} <P> {_predicate_words(predicate)} <O> {_words(obj)}")
    return " ".join(parts)


def linearize_lines(lines: list[str], name: str) -> list[str]:
    """``linearize`` of every line of the file ``name`` (blank lines stay blank); errors name ``name:line``."""
    return [linearize(line, f"{name}:{number}") for number, line in enumerate(lines, start=1)]


INPUT_FORMATS = ("text", "triples")


def prepare_sources(lines: list[str], input_format: str, name: str) -> list[str]:
    """Source lines as the model reads them: as given (``text``) or linearized from triple sets (``triples``)."""
    if input_format == "text":
        return lines
    if input_format == "triples":
        return linearize_lines(lines, name)
    raise ValueError(f"unknown input format {input_format!r}: one of {', '.join(INPUT_FORMATS)}")


__all__ = ["FIELD_SEPARATOR", "INPUT_FORMATS", "MARKERS", "TRIPLE_SEPARATOR", "TripleFormatError", "linearize",
           "linearize_lines", "parse_triples", "prepare_sources"]
