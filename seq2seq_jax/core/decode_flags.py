"""The decoding flags of both translators' command lines, defined once: ``seq2seq translate`` / ``evaluate`` /
``serve`` and ``python -m torch_ref.translate``.

Each flag sets the ``DecodeConfig`` field of its name (``--beam-size`` is ``decode.beam_size``) and its help is
that field's meaning (``core/config.py``); a flag left out is ``None``, which ``search_settings.decode_settings``
reads as "the workdir's (or export's) own setting". ``checkpoint_arg`` is the type of every ``--checkpoint``.
"""

from __future__ import annotations

import argparse
from typing import get_type_hints

from seq2seq_jax.core.config import DecodeConfig
from seq2seq_jax.core.field_docs import field_help

# The search settings both sides implement, in the order --help lists them; sampling is the JAX side's alone.
SEARCH_FIELDS = ("beam_size", "length_penalty", "n_best", "min_len", "max_len_a", "max_len_b", "no_repeat_ngram_size",
                 "batch_size")
SAMPLING_FIELDS = ("sample", "temperature", "top_k", "top_p", "seed")
CHECKPOINT_NAMES = ("best", "latest")


def add_decode_flags(parser: argparse.ArgumentParser, *, sampling: bool = True,
                     defaults_from: str = "the workdir's decode config") -> argparse._ArgumentGroup:
    """Add ``--beam-size``, ``--length-penalty``, ... (and with ``sampling`` ``--sample``, ``--temperature``,
    ``--top-k``, ``--top-p``, ``--seed``) to ``parser`` as one group; returns the group."""
    group = parser.add_argument_group(f"decoding (defaults: {defaults_from})")
    hints = get_type_hints(DecodeConfig)
    for name in SEARCH_FIELDS + (SAMPLING_FIELDS if sampling else ()):
        flag, help_text = "--" + name.replace("_", "-"), field_help("decode", name)
        if hints[name] is bool:
            group.add_argument(flag, action="store_true", default=None, help=help_text)
        else:
            metavar = {"int": "N", "float": "X"}[hints[name].__name__]
            group.add_argument(flag, type=hints[name], metavar=metavar, help=help_text)
    return group


def add_language_flag(parser: argparse.ArgumentParser) -> None:
    """``--tgt-lang L``: the target language of a multilingual model (docs/multilingual.md)."""
    parser.add_argument("--tgt-lang", metavar="L", help="target language of a multilingual model (one of its "
                        "data.corpora's tgt_lang; needed when it has several, refused by a model without tags)")


def add_output_flags(parser: argparse.ArgumentParser) -> None:
    """``--with-score`` and ``--one-line-per-input``: the layout of the output lines (``format_output``)."""
    parser.add_argument("--with-score", action="store_true",
                        help="add <TAB>score (the search's, length-normalised) to each output line")
    parser.add_argument("--one-line-per-input", action="store_true",
                        help="write an input's n-best on one line (text<TAB>score per hypothesis) instead of "
                             "--n-best lines per input")


def checkpoint_arg(value: str) -> str | int:
    """``best``, ``latest`` or a step number; anything else is an argparse error listing them."""
    if value in CHECKPOINT_NAMES:
        return value
    if value.isdigit():
        return int(value)
    raise argparse.ArgumentTypeError(f"{value!r} is not a checkpoint: use best, latest or a step number")
