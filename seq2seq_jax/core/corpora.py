"""The corpora of one run (``data.corpora``): each a pair of training files, its target language and its own
validation files; the language tags they put in their sources.

A corpus with a target language ``L`` gets the tag ``<2L>`` (``tag_of``) as the first source token of every pair
(or the last before the EOS: ``data.tag_position``), the standard recipe of tagged multilingual training (Johnson
et al., 2017); the tag is a reserved piece of the source (or joint) vocabulary, never split. ``name`` (default
``SRC-TGT`` or ``TGT``) names the corpus's splits, reports and per-direction validation metrics. Standard library only.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

TAG_POSITIONS = ("first", "last")  # where a corpus's tag goes in its sources (data.tag_position)

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def tag_of(language: str) -> str:
    """The source tag that asks for a translation into ``language``: ``<2fr>`` for ``fr``."""
    return f"<2{language}>"


class CorpusError(ValueError):
    """A ``data.corpora`` entry that cannot work; the message names its position and field."""


@dataclasses.dataclass(frozen=True)
class CorpusSpec:
    """One corpus: line-aligned ``src`` / ``tgt`` training files, ``tgt_lang`` (its tag ``<2tgt_lang>``; "" for
    none), ``src_lang`` (recorded, names the direction), ``valid_src`` / ``valid_tgt`` (its validation pairs)."""

    src: str
    tgt: str
    tgt_lang: str = ""
    src_lang: str = ""
    valid_src: str = ""
    valid_tgt: str = ""
    name: str = ""

    def __post_init__(self):
        if not self.name:
            default = "-".join(part for part in (self.src_lang, self.tgt_lang) if part)
            object.__setattr__(self, "name", default)
        for field in ("tgt_lang", "src_lang", "name"):
            value = getattr(self, field)
            if value and not NAME_PATTERN.match(value):
                raise CorpusError(f"{field} {value!r}: use letters, digits, '_' and '-' only")
        if not self.name:
            raise CorpusError("give a tgt_lang (or a name) to each corpus")
        if not (self.src and self.tgt):
            raise CorpusError("src and tgt (the training files) are required")
        if bool(self.valid_src) != bool(self.valid_tgt):
            raise CorpusError("valid_src and valid_tgt must be given together")

    @property
    def tag(self) -> str | None:
        return tag_of(self.tgt_lang) if self.tgt_lang else None

    @property
    def has_valid(self) -> bool:
        return bool(self.valid_src)

    @classmethod
    def from_value(cls, value: Any, position: int) -> CorpusSpec:
        """A ``CorpusSpec`` of a JSON object (or one already); errors name ``data.corpora[position]``."""
        if isinstance(value, CorpusSpec):
            return value
        if not isinstance(value, dict):
            raise CorpusError(f"data.corpora[{position}]: expected an object with src, tgt, tgt_lang, ... "
                              f"(set data.corpora in a config file), got {value!r}")
        known = [field.name for field in dataclasses.fields(cls)]
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise CorpusError(f"data.corpora[{position}]: unknown field(s) {unknown}; known fields are {known}")
        try:
            return cls(**value)
        except (CorpusError, TypeError) as error:
            raise CorpusError(f"data.corpora[{position}]: {error}") from None


def check_corpora(corpora: Sequence[CorpusSpec]) -> None:
    """Names unique; every corpus tagged or none (an untagged corpus beside tagged ones has no direction)."""
    names = [corpus.name for corpus in corpora]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise CorpusError(f"data.corpora: the name {repeated[0]!r} is used twice; give each corpus its own name")
    tagged = [bool(corpus.tgt_lang) for corpus in corpora]
    if any(tagged) and not all(tagged):
        untagged = names[tagged.index(False)]
        raise CorpusError(f"data.corpora: corpus {untagged!r} has no tgt_lang beside tagged ones; give each a "
                          "tgt_lang")


def languages_of(corpora: Sequence[CorpusSpec]) -> dict[str, str]:
    """``{target language: its tag}`` of the corpora, in order of first appearance ({} without tags)."""
    return {corpus.tgt_lang: corpus.tag for corpus in corpora if corpus.tgt_lang}


def train_split(name: str) -> str:
    """The split of a corpus's training pairs in a preprocessed corpus: ``train.NAME``."""
    return f"train.{name}"


def valid_split(name: str) -> str:
    """The split of a corpus's validation pairs: ``valid.NAME``."""
    return f"valid.{name}"


__all__ = ["CorpusSpec", "CorpusError", "TAG_POSITIONS", "check_corpora", "languages_of", "tag_of", "train_split",
           "valid_split"]
