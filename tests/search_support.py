"""Calling a search (JAX or torch_ref) with the keyword options the search tests are written in."""

from __future__ import annotations

import dataclasses

from seq2seq_jax.core.config import DecodeConfig

_SETTING_NAMES = {field.name for field in dataclasses.fields(DecodeConfig)}


def run_search(search_fn, decode_step, state, src_len, *leading, **options):
    """``search_fn(decode_step, state, src_len, *leading, settings, **rest)``: the options that are
    ``DecodeConfig`` fields become the settings record, the others (``max_len_bound``, ``prefix``, ...) stay
    keywords. ``leading``: what comes before the settings (sampling's rng)."""
    settings = DecodeConfig(**{name: value for name, value in options.items() if name in _SETTING_NAMES})
    rest = {name: value for name, value in options.items() if name not in _SETTING_NAMES}
    return search_fn(decode_step, state, src_len, *leading, settings, **rest)
