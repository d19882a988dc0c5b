"""Every config field's type, default and one-line meaning, as ``seq2seq config --describe`` and the command
line's help show them (the meanings are written once, beside each field, in ``seq2seq_jax.core.config``)."""

from __future__ import annotations

import dataclasses
from typing import Any, get_type_hints

from seq2seq_jax.core.config import _SECTIONS


@dataclasses.dataclass(frozen=True)
class FieldDoc:
    """One config field as ``seq2seq config --describe`` lists it."""

    key: str      # section.name
    type: str
    default: Any
    help: str


def describe_fields() -> list[FieldDoc]:
    """Every field of every section, in section and declaration order, with its type, default and meaning."""
    docs = []
    for section_name, section in _SECTIONS.items():
        hints = get_type_hints(section)
        for f in dataclasses.fields(section):
            type_name = getattr(hints[f.name], "__name__", None) if hints[f.name] in (int, float, str, bool) else None
            docs.append(FieldDoc(f"{section_name}.{f.name}", type_name or str(hints[f.name]), f.default,
                                 f.metadata.get("help", "")))
    return docs


def field_help(section: str, name: str) -> str:
    """The one-line meaning of ``section.name``."""
    return {f.name: f.metadata["help"] for f in dataclasses.fields(_SECTIONS[section])}[name]
