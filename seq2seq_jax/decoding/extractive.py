"""Extractive baselines for dialogue summarization: a summary made of turns copied from the dialogue.

A dialogue is one line whose turns each start with a speaker tag (``#Person1#: ...`` in DialogSum). The
baselines every abstractive summarizer should beat:

* Lead-k: the first ``k`` turns;
* Longest-k: the ``k`` longest turns (in words; earlier first on ties), in dialogue order.
"""

from __future__ import annotations

import re

# A speaker tag at the start of a turn: ``#Person1#:``, ``#Person_2#:`` ...
TURN_TAG = re.compile(r"#Person_?\d+#:")


def split_turns(dialogue: str) -> list[str]:
    """The turns of a one-line dialogue, each with its speaker tag; text before the first tag is a turn too."""
    starts = [match.start() for match in TURN_TAG.finditer(dialogue)]
    if not starts or starts[0] != 0:
        starts = [0] + starts
    bounds = starts + [len(dialogue)]
    turns = [dialogue[begin:end].strip() for begin, end in zip(bounds, bounds[1:], strict=False)]
    return [turn for turn in turns if turn]


def lead(dialogue: str, k: int = 3) -> str:
    """The first ``k`` turns, joined by spaces."""
    return " ".join(split_turns(dialogue)[:k])


def longest(dialogue: str, k: int = 3) -> str:
    """The ``k`` longest turns (by whitespace words, earlier first on ties), kept in dialogue order."""
    turns = split_turns(dialogue)
    ranked = sorted(range(len(turns)), key=lambda i: (-len(turns[i].split()), i))[:k]
    return " ".join(turns[i] for i in sorted(ranked))


__all__ = ["split_turns", "lead", "longest", "TURN_TAG"]
