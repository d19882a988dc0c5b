"""Decoding pieces both searches and both translators share: the output length limit, the decode-settings
overlay of a command line, the ids of a search result, ``Hypothesis`` and the n-best output line."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from seq2seq_jax.core.tokens import EOS_ID

if TYPE_CHECKING:
    from seq2seq_jax.core.config import DecodeConfig


def max_len_for(src_len: int, max_len_a: float, max_len_b: float) -> int:
    """Largest number of generated tokens (EOS included) for a source of ``src_len`` real tokens:
    ``max(1, ceil(a * src_len + b))`` in Python float64."""
    return max(1, math.ceil(max_len_a * int(src_len) + max_len_b))


def decode_settings(base: DecodeConfig, overrides: Any) -> DecodeConfig:
    """``base`` with every field that ``overrides`` (a command line's ``argparse.Namespace``, or a mapping of
    names to values) sets to something other than None; other names are ignored. A new ``beam_size`` without
    ``n_best`` caps ``n_best`` at it."""
    values = overrides if isinstance(overrides, Mapping) else vars(overrides)
    changes = {f.name: values[f.name] for f in dataclasses.fields(base) if values.get(f.name) is not None}
    if "beam_size" in changes and "n_best" not in changes:
        changes["n_best"] = min(base.n_best, changes["beam_size"])
    return dataclasses.replace(base, **changes)


def output_ids(tokens: Sequence[int], length: int) -> list[int]:
    """The generated ids of one search result row (``tokens[:length]``) without a final EOS."""
    ids = [int(token) for token in tokens[:length]]
    return ids[:-1] if ids and ids[-1] == EOS_ID else ids


@dataclasses.dataclass
class Hypothesis:
    """One output: detokenized ``text``, its ``tokens`` (ids, EOS excluded), ``score`` and, when asked,
    ``attention [len(tokens) + 1, src_len]`` (the last row is the EOS step)."""

    text: str
    tokens: list[int]
    score: float
    attention: np.ndarray | None = None


def format_line(hypotheses: Sequence[Hypothesis], n_best: int) -> str:
    """An input's output on one line (without newline), the ``--one-line-per-input`` layout: the best text, or
    ``text<TAB>score`` per hypothesis when ``n_best > 1``; empty for a blank source, which has no hypotheses."""
    if not hypotheses:
        return ""
    if n_best > 1:
        return "\t".join(f"{h.text}\t{h.score:.6f}" for h in hypotheses)
    return hypotheses[0].text


def format_output(hypotheses: Sequence[Hypothesis], n_best: int, *, with_score: bool = False,
                  one_line_per_input: bool = False) -> str:
    """What a translator writes for one input line, newline-terminated.

    By default (OpenNMT-py's layout) ``n_best`` lines, best first: each hypothesis' text, with ``<TAB>score``
    when ``with_score``; a blank source (no hypotheses) gives ``n_best`` empty lines, so every input has
    exactly ``n_best`` lines. ``one_line_per_input``: ``format_line``'s single line (scores as it writes them,
    and after the text when ``with_score`` and ``n_best == 1``).
    """
    if one_line_per_input:
        line = format_line(hypotheses, n_best)
        if with_score and n_best == 1 and hypotheses:
            line += f"\t{hypotheses[0].score:.6f}"
        return line + "\n"
    lines = [f"{h.text}\t{h.score:.6f}" if with_score else h.text for h in list(hypotheses)[:n_best]]
    return "".join(line + "\n" for line in lines + [""] * (n_best - len(lines)))


__all__ = ["max_len_for", "decode_settings", "output_ids", "Hypothesis", "format_line", "format_output"]
