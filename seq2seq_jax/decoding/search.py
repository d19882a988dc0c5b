"""Search over a model-agnostic ``decode_step``: the front door of beam search, greedy search and sampling.

``search(decode_step, init_state, src_len, settings, max_len_bound=L)`` runs what the settings record
(the config's ``decode`` section, ``DecodeConfig``) asks for -- sampling when ``settings.sample``, greedy
search for one beam, beam search otherwise -- and every search returns a ``BeamResult``. The rules both this
package and ``torch_ref/search.py`` follow are numbered in docs/search.md; the implementations live in
``beam_search.py``, ``sequential_search.py`` and the shared ``search_rules.py``.
"""

from __future__ import annotations

from typing import Any

import jax

from seq2seq_jax.core.config import DecodeConfig
from seq2seq_jax.core.search_settings import max_len_for
from seq2seq_jax.core.tokens import BOS_ID, EOS_ID
from seq2seq_jax.decoding.beam_search import beam_search
from seq2seq_jax.decoding.search_rules import (
    BeamResult,
    DecodeStep,
    first_max_index,
    length_penalty_table,
    max_len_bound_for,
    top_k,
)
from seq2seq_jax.decoding.sequential_search import compaction_sizes, greedy_search, sample


def search(decode_step: DecodeStep, init_state: Any, src_len: jax.Array, settings: DecodeConfig, *,
           max_len_bound: int, rng: jax.Array | None = None, prefix: jax.Array | None = None,
           prefix_len: jax.Array | None = None, compact: bool = False) -> BeamResult:
    """The search ``settings`` names, over ``init_state`` (leaves ``[B, ...]``) and ``src_len [B]``. Jittable.

    ``rng``: the key sampling draws from (required when ``settings.sample``). Greedy search (one beam, not
    sampling) is the plain argmax loop whatever the length penalty; ``compact`` applies to it only.
    Returns a BeamResult with ``n = settings.n_best`` (1 for greedy search and sampling) hypotheses a sentence.
    """
    options = dict(max_len_bound=max_len_bound, prefix=prefix, prefix_len=prefix_len)
    if settings.sample:
        if rng is None:
            raise ValueError("sampling needs an rng key")
        return sample(decode_step, init_state, src_len, rng, settings, **options)
    if settings.beam_size == 1:
        return greedy_search(decode_step, init_state, src_len, settings, compact=compact, **options)
    return beam_search(decode_step, init_state, src_len, settings, **options)


__all__ = ["BOS_ID", "EOS_ID", "BeamResult", "DecodeStep", "beam_search", "compaction_sizes", "first_max_index",
           "greedy_search", "length_penalty_table", "max_len_bound_for", "max_len_for", "sample", "search", "top_k"]
