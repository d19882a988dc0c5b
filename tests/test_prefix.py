"""Target-prefix decoding (rule 10 of docs/search.md): every hypothesis starts with its sentence's
prefix, the search continues after it, JAX and torch_ref return the same n-best, and a sentence decodes the same alone
or in a batch of mixed prefix lengths. The prefix wins over min_len / no-repeat bans; after it they apply."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from parity_support import eos_prone_pair, make_batch, precision
from search_support import run_search

from seq2seq_jax.decoding.search import beam_search, greedy_search, max_len_bound_for, max_len_for, sample
from torch_ref.search import beam_search as torch_beam_search
from torch_ref.search import greedy_search as torch_greedy_search

EOS = 3
SRC_LENS = (5, 2, 4, 1, 3)
PREFIX_LENS = (3, 0, 1, 2, 0)


@functools.cache
def _models(dtype: str, tgt_vocab_size: int = 13):
    """A Luong model whose EOS is likely (hypotheses end both by EOS and by length). With a vocabulary of 200,
    beam search's top-k runs over chunks (decode._top_k) while forced steps leave one finite candidate."""
    return eos_prone_pair(dtype, tgt_vocab_size=tgt_vocab_size)


def _prefixes(config, lengths=PREFIX_LENS, seed=4, width=4):
    rng = np.random.default_rng(seed)
    prefix = np.zeros((len(lengths), width), np.int32)
    for row, length in enumerate(lengths):
        prefix[row, :length] = rng.integers(4, config.tgt_vocab_size, length)
    return prefix, np.array(lengths, np.int32)


def _jax_search(dtype, src, src_len, prefix, prefix_len, kind="beam", vocab=13, **settings):
    _, _, model = _models(dtype, vocab)
    bound = max_len_bound_for(src_len, settings["max_len_a"], settings["max_len_b"])
    with precision(dtype):
        state, step = model.search_state(jnp.asarray(src), jnp.asarray(src_len))
        extra = dict(max_len_bound=bound, prefix=jnp.asarray(prefix), prefix_len=jnp.asarray(prefix_len))
        if kind == "greedy":
            return jax.device_get(run_search(greedy_search, step, state, jnp.asarray(src_len), **settings, **extra))
        if kind == "sample":
            return jax.device_get(run_search(sample, step, state, jnp.asarray(src_len), jax.random.key(3),
                                  **settings, **extra))
        return jax.device_get(run_search(beam_search, step, state, jnp.asarray(src_len), **settings, **extra))


def _starts_with_prefix(tokens, lengths, prefix, prefix_len):
    for row, length in enumerate(prefix_len):
        for rank in range(tokens.shape[1]):
            if lengths[row, rank] > 0:
                np.testing.assert_array_equal(tokens[row, rank, :length], prefix[row, :length])


SETTINGS = [
    dict(beam_size=4, n_best=3, length_penalty=0.6, min_len=0, no_repeat_ngram_size=0, max_len_a=1.0, max_len_b=2.0),
    dict(beam_size=5, n_best=5, length_penalty=0.0, min_len=3, no_repeat_ngram_size=2, max_len_a=1.0, max_len_b=2.0),
    dict(beam_size=1, n_best=1, length_penalty=0.0, min_len=2, no_repeat_ngram_size=0, max_len_a=1.0, max_len_b=2.0),
]


@pytest.mark.parametrize(("settings", "vocab"), [(SETTINGS[0], 13), (SETTINGS[1], 13), (SETTINGS[2], 13),
                                                  (SETTINGS[0], 200)],
                         ids=["K4-a0.6", "K5-min3-norepeat2", "K1-min2", "K4-a0.6-vocab200"])
def test_prefix_nbest_matches_torch_float64(settings, vocab):
    config, reference, _ = _models("float64", vocab)
    batch = make_batch(config, src_lens=SRC_LENS, tgt_lens=(1,) * len(SRC_LENS), seed=1)
    prefix, prefix_len = _prefixes(config)
    result = _jax_search("float64", batch.src, batch.src_len, prefix, prefix_len, vocab=vocab, **settings)
    tensors = batch.torch()
    with torch.no_grad():
        state = reference.init_decode_state(tensors["src"], tensors["src_len"])
        expected = run_search(torch_beam_search, reference.decode_step, state, tensors["src_len"],
                                     max_len_bound=int(result.tokens.shape[-1]), prefix=torch.from_numpy(prefix),
                                     prefix_len=torch.from_numpy(prefix_len), **settings)
    np.testing.assert_array_equal(result.lengths, expected.lengths.numpy())
    np.testing.assert_array_equal(result.tokens, expected.tokens.numpy())
    finite = np.isfinite(expected.scores.numpy())
    np.testing.assert_allclose(result.scores[finite], expected.scores.numpy()[finite], rtol=1e-9, atol=0)
    _starts_with_prefix(result.tokens, result.lengths, prefix, prefix_len)
    # The search goes on after the prefix: some hypotheses are longer than their prefix.
    assert np.any(result.lengths[prefix_len > 0, 0] > prefix_len[prefix_len > 0])


def test_greedy_prefix_matches_torch_and_beam_one():
    config, reference, _ = _models("float64")
    batch = make_batch(config, src_lens=SRC_LENS, tgt_lens=(1,) * len(SRC_LENS), seed=2)
    prefix, prefix_len = _prefixes(config, seed=5)
    settings = dict(length_penalty=0.0, min_len=0, max_len_a=1.0, max_len_b=2.0)
    greedy = _jax_search("float64", batch.src, batch.src_len, prefix, prefix_len, kind="greedy", **settings)
    beam = _jax_search("float64", batch.src, batch.src_len, prefix, prefix_len, beam_size=1, n_best=1, **settings)
    np.testing.assert_array_equal(greedy.tokens, beam.tokens)
    np.testing.assert_allclose(greedy.scores, beam.scores, rtol=1e-12)
    tensors = batch.torch()
    with torch.no_grad():
        state = reference.init_decode_state(tensors["src"], tensors["src_len"])
        expected = run_search(torch_greedy_search, reference.decode_step, state, tensors["src_len"],
                                       max_len_bound=int(greedy.tokens.shape[-1]), prefix=torch.from_numpy(prefix),
                                       prefix_len=torch.from_numpy(prefix_len), **settings)
    np.testing.assert_array_equal(greedy.tokens, expected.tokens.numpy())
    np.testing.assert_allclose(greedy.scores, expected.scores.numpy(), rtol=1e-9)
    _starts_with_prefix(greedy.tokens, greedy.lengths, prefix, prefix_len)


def test_sentence_with_prefix_alone_equals_inside_mixed_batch():
    config, _, _ = _models("float32")
    batch = make_batch(config, src_lens=SRC_LENS, tgt_lens=(1,) * len(SRC_LENS), seed=3)
    prefix, prefix_len = _prefixes(config, seed=6)
    settings = dict(beam_size=4, n_best=1, length_penalty=0.6, min_len=0, max_len_a=1.0, max_len_b=2.0)
    together = _jax_search("float32", batch.src, batch.src_len, prefix, prefix_len, **settings)
    _starts_with_prefix(together.tokens, together.lengths, prefix, prefix_len)
    for row, src_len in enumerate(SRC_LENS[:3]):  # prefixes of 3, 0 and 1 pieces
        width = max(int(prefix_len[row]), 1)  # a different static prefix width than the batch's
        alone = _jax_search("float32", batch.src[row:row + 1, :src_len], batch.src_len[row:row + 1],
                            prefix[row:row + 1, :width], prefix_len[row:row + 1], **settings)
        length = int(alone.lengths[0, 0])
        assert length == together.lengths[row, 0]
        np.testing.assert_array_equal(alone.tokens[0, 0, :length], together.tokens[row, 0, :length])
        np.testing.assert_allclose(alone.scores[0, 0], together.scores[row, 0], rtol=1e-5)


def test_prefix_wins_over_bans_which_apply_after_it():
    """A prefix that repeats a token under no_repeat_ngram_size=1 and is shorter than min_len: the prefix is
    kept, at the model's unbanned log-prob (the same sum with and without the bans), and after it no token
    repeats and EOS waits for min_len."""
    config, _, _ = _models("float64")
    batch = make_batch(config, src_lens=(5, 4), tgt_lens=(1, 1), seed=1)
    prefix = np.array([[5, 5, 5], [6, 6, 0]], np.int32)
    prefix_len = np.array([3, 2], np.int32)
    common = dict(beam_size=3, n_best=3, length_penalty=0.0, max_len_a=1.0, max_len_b=4.0)
    banned = _jax_search("float64", batch.src, batch.src_len, prefix, prefix_len, min_len=6,
                         no_repeat_ngram_size=1, **common)
    _starts_with_prefix(banned.tokens, banned.lengths, prefix, prefix_len)
    for row, length in enumerate(prefix_len):
        for rank in range(3):
            n = int(banned.lengths[row, rank])
            rest = banned.tokens[row, rank, length:n]
            assert n >= min(6, max_len_for(int(batch.src_len[row]), 1.0, 4.0))
            assert len(set(rest.tolist())) == len(rest) and prefix[row, 0] not in rest.tolist()
    # Forced steps only: a prefix as long as the limit gives exactly the prefix, scored with the unbanned
    # log-probs (the same with and without bans).
    full = np.array([[5, 5, 5, 5, 5, 5, 5, 5, 5, 5]], np.int32)
    limit = max_len_for(5, 1.0, 4.0)
    scores = []
    for bans in (dict(min_len=0, no_repeat_ngram_size=0), dict(min_len=20, no_repeat_ngram_size=1)):
        result = _jax_search("float64", batch.src[:1], batch.src_len[:1], full[:, :limit], np.array([limit], np.int32),
                             **common, **bans)
        assert int(result.lengths[0, 0]) == limit
        np.testing.assert_array_equal(result.tokens[0, 0, :limit], full[0, :limit])
        scores.append(float(result.scores[0, 0]))
    assert np.isfinite(scores[0]) and scores[0] == scores[1]


def test_sampling_starts_with_the_prefix():
    config, _, _ = _models("float32")
    batch = make_batch(config, src_lens=SRC_LENS, tgt_lens=(1,) * len(SRC_LENS), seed=1)
    prefix, prefix_len = _prefixes(config, seed=8)
    result = _jax_search("float32", batch.src, batch.src_len, prefix, prefix_len, kind="sample", temperature=1.5,
                         max_len_a=1.0, max_len_b=2.0)
    _starts_with_prefix(result.tokens, result.lengths, prefix, prefix_len)


def test_prefix_needs_both_arrays():
    config, _, model = _models("float32")
    batch = make_batch(config, src_lens=(3,), tgt_lens=(1,), seed=1)
    with precision("float32"):
        state, step = model.search_state(jnp.asarray(batch.src), jnp.asarray(batch.src_len))
        with pytest.raises(ValueError, match="prefix and prefix_len"):
            run_search(beam_search, step, state, jnp.asarray(batch.src_len), beam_size=2, length_penalty=0.0,
                       max_len_a=1.0, max_len_b=2.0, max_len_bound=8, prefix=jnp.zeros((1, 2), jnp.int32))
