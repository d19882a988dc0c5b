"""Beam search on the real model with converted weights: seq2seq_jax (one lax.while_loop over the step of
``Seq2Seq.search_state``, the encoder memory kept once per sentence) against torch_ref (a Python loop over
``torch_ref.Seq2Seq.decode_step``).

float64: identical n-best token ids and lengths, scores within 1e-9; float32: identical ids, scores within 1e-4.
Also: greedy equals a plain argmax loop over the model, and decoding a sentence alone or inside a padded
batch of mixed lengths gives the same tokens and scores.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from parity_support import eos_prone_pair, make_batch, precision
from search_support import run_search

from seq2seq_jax.decoding.search import beam_search, greedy_search, max_len_bound_for, max_len_for
from torch_ref.search import beam_search as torch_beam_search

EOS = 3
SRC_LENS = (5, 2, 4, 1, 3)


@functools.cache
def _models(dtype: str, copy: bool = False, coverage: bool = False):
    return eos_prone_pair(dtype, copy, coverage=coverage)


def _jax_search(dtype, src, src_len, copy=False, coverage=False, **settings):
    _, _, model = _models(dtype, copy, coverage)
    bound = max_len_bound_for(src_len, settings["max_len_a"], settings["max_len_b"])
    with precision(dtype):
        # What Translator runs: memory, keys and mask once per sentence, only h, c, feed, attention per beam.
        state, decode_step = model.search_state(jnp.asarray(src), jnp.asarray(src_len))
        if settings.get("greedy"):
            settings = {k: v for k, v in settings.items() if k not in ("greedy", "beam_size", "n_best")}
            return run_search(greedy_search, decode_step, state, jnp.asarray(src_len), max_len_bound=bound, **settings)
        return run_search(beam_search, decode_step, state, jnp.asarray(src_len), max_len_bound=bound, **settings)


# K in {1, 4, 5} x alpha in {0, 0.6, 1.0}; min_len cycles through 0 (off), 2 and 3.
SETTINGS = [dict(beam_size=k, length_penalty=alpha, n_best=min(k, 3), min_len=(0, 2, 3)[index % 3], max_len_a=1.0,
                 max_len_b=1.0)
            for index, (k, alpha) in enumerate(itertools.product((1, 4, 5), (0.0, 0.6, 1.0)))]


def _settings_id(settings):
    return f"K{settings['beam_size']}-a{settings['length_penalty']}-min{settings['min_len']}"


@pytest.mark.parametrize(("settings", "copy", "coverage"), [(settings, False, False) for settings in SETTINGS]
                         + [(SETTINGS[index], True, False) for index in (1, 4, 8)]
                         + [(SETTINGS[index], True, True) for index in (1, 5)],
                         ids=[_settings_id(settings) for settings in SETTINGS]
                         + [f"{_settings_id(SETTINGS[index])}-copy" for index in (1, 4, 8)]
                         + [f"{_settings_id(SETTINGS[index])}-copy-coverage" for index in (1, 5)])
def test_beam_nbest_matches_torch_float64(settings, copy, coverage):
    config, reference, _ = _models("float64", copy, coverage)
    batch = make_batch(config, src_lens=SRC_LENS, tgt_lens=(1,) * len(SRC_LENS), seed=1)
    result = jax.device_get(_jax_search("float64", batch.src, batch.src_len, copy, coverage, **settings))
    tensors = batch.torch()
    with torch.no_grad():
        state = reference.init_decode_state(tensors["src"], tensors["src_len"])
        expected = run_search(torch_beam_search, reference.decode_step, state, tensors["src_len"], max_len_bound=int(
            result.tokens.shape[-1]), **settings)
    np.testing.assert_array_equal(result.lengths, expected.lengths.numpy())
    np.testing.assert_array_equal(result.tokens, expected.tokens.numpy())
    finite = np.isfinite(expected.scores.numpy())
    np.testing.assert_allclose(result.scores[finite], expected.scores.numpy()[finite], rtol=1e-9, atol=0)
    np.testing.assert_allclose(result.attention, expected.attention.numpy(), rtol=0, atol=1e-12)


def test_length_constraints_are_hit():
    """Across the settings above some hypotheses end by EOS exactly at min_len and some are cut at max_len."""
    config, _, _ = _models("float64")
    batch = make_batch(config, src_lens=SRC_LENS, tgt_lens=(1,) * len(SRC_LENS), seed=1)
    max_lens = np.array([max_len_for(s, 1.0, 1.0) for s in SRC_LENS])
    hit_min = hit_max = False
    for settings in SETTINGS:
        result = jax.device_get(_jax_search("float64", batch.src, batch.src_len, **settings))
        best_len = result.lengths[:, 0]
        ends_with_eos = result.tokens[np.arange(len(best_len)), 0, best_len - 1] == EOS
        hit_min |= bool(np.any(ends_with_eos & (best_len == settings["min_len"]) & (settings["min_len"] > 1)))
        hit_max |= bool(np.any(~ends_with_eos & (best_len == max_lens)))
        assert np.all(best_len >= np.minimum(settings["min_len"], max_lens))
    assert hit_min and hit_max


@pytest.mark.parametrize("settings", [SETTINGS[1], SETTINGS[5]], ids=["K1", "K4"])
def test_beam_scores_match_torch_float32(settings):
    config, reference, _ = _models("float32")
    batch = make_batch(config, src_lens=SRC_LENS, tgt_lens=(1,) * len(SRC_LENS), seed=1)
    result = jax.device_get(_jax_search("float32", batch.src, batch.src_len, **settings))
    tensors = batch.torch()
    with torch.no_grad():
        state = reference.init_decode_state(tensors["src"], tensors["src_len"])
        expected = run_search(torch_beam_search, reference.decode_step, state, tensors["src_len"],
                                     max_len_bound=int(result.tokens.shape[-1]), **settings)
    np.testing.assert_array_equal(result.tokens, expected.tokens.numpy())
    finite = np.isfinite(expected.scores.numpy())
    np.testing.assert_allclose(result.scores[finite], expected.scores.numpy()[finite], rtol=1e-4, atol=0)


def test_greedy_equals_plain_argmax_loop():
    config, _, model = _models("float64")
    batch = make_batch(config, src_lens=SRC_LENS, tgt_lens=(1,) * len(SRC_LENS), seed=2)
    settings = dict(beam_size=1, n_best=1, length_penalty=0.0, min_len=0, max_len_a=1.0, max_len_b=1.0)
    beam = jax.device_get(_jax_search("float64", batch.src, batch.src_len, **settings))
    greedy = jax.device_get(_jax_search("float64", batch.src, batch.src_len, greedy=True, **settings))
    with precision("float64"):
        for row, src_len in enumerate(SRC_LENS):
            state = model.init_decode_state(jnp.asarray(batch.src[row:row + 1]), jnp.asarray([src_len]))
            token, tokens = 2, []
            for _ in range(max_len_for(src_len, 1.0, 1.0)):
                logits, state = model.decode_step(state, jnp.asarray([token]))
                token = int(jnp.argmax(logits[0]))
                tokens.append(token)
                if token == EOS:
                    break
            for result in (beam, greedy):
                assert list(result.tokens[row, 0, : result.lengths[row, 0]]) == tokens


@pytest.mark.parametrize("beam_size", [1, 4])
def test_sentence_alone_equals_inside_padded_batch(beam_size):
    config, _, _ = _models("float32")
    batch = make_batch(config, src_lens=SRC_LENS, tgt_lens=(1,) * len(SRC_LENS), seed=3)
    settings = dict(beam_size=beam_size, n_best=1, length_penalty=0.6, min_len=0, max_len_a=1.0, max_len_b=2.0)
    together = jax.device_get(_jax_search("float32", batch.src, batch.src_len, **settings))
    for row, src_len in enumerate(SRC_LENS):
        alone = jax.device_get(_jax_search("float32", batch.src[row:row + 1, :src_len], batch.src_len[row:row + 1],
                                           **settings))
        length = int(alone.lengths[0, 0])
        assert length == together.lengths[row, 0]
        np.testing.assert_array_equal(alone.tokens[0, 0, :length], together.tokens[row, 0, :length])
        np.testing.assert_allclose(alone.scores[0, 0], together.scores[row, 0], rtol=1e-5)
