"""Ensembles: a two-model ensemble of different sizes and architectures gives the same n-best and scores in JAX
(seq2seq_jax.decoding.ensemble, one search over both models) and torch_ref (torch_ref.ensemble), float64; a model
ensembled with itself gives exactly its own n-best; the mean of probabilities is computed stably."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from parity_support import jax_params, make_batch, make_pair, precision, tiny_config
from search_support import run_search

from seq2seq_jax.core.encoding import Example
from seq2seq_jax.core.tokenizer import TokenizerError, VocabularyTokenizer, check_shared_tokenizers
from seq2seq_jax.decoding.ensemble import ensemble_logits, ensemble_search_state, mean_log_probs
from seq2seq_jax.decoding.scoring import Scorer
from seq2seq_jax.decoding.search import beam_search, greedy_search, max_len_bound_for
from torch_ref.ensemble import Ensemble
from torch_ref.ensemble import ensemble_logits as torch_ensemble_logits
from torch_ref.ensemble import mean_log_probs as torch_mean_log_probs
from torch_ref.score import score_ids
from torch_ref.search import beam_search as torch_beam_search

EOS = 3
SRC_LENS = (5, 2, 4, 1, 3)


@functools.cache
def _members(dtype: str):
    """Two models over the same vocabularies: a Luong 2-layer one and a smaller Bahdanau one."""
    big = tiny_config(dtype, decoder_style="luong", attention="general", enc_layers=2, dec_layers=2)
    small = tiny_config(dtype, enc_hidden_size=3, dec_hidden_size=5, attention_size=4, readout_size=6)
    members = []
    for seed, config in ((7, big), (8, small)):
        reference, model = make_pair(config, "torch->flax", seed=seed)
        with torch.no_grad():
            reference.output.bias[EOS] += 1.5
        with precision(dtype):
            model.output.bias[...] = jnp.asarray(reference.output.bias.detach().numpy())
            members.append((reference, nnx.split(model, nnx.Param)[0], jax_params(model)))
    return members


def _jax_ensemble_search(dtype, members, src, src_len, greedy=False, **settings):
    bound = max_len_bound_for(src_len, settings["max_len_a"], settings["max_len_b"])
    with precision(dtype):
        states = [nnx.merge(graphdef, params).search_state(jnp.asarray(src), jnp.asarray(src_len),
                                                          with_attention=index == 0)
                  for index, (_, graphdef, params) in enumerate(members)]
        state, step = ensemble_search_state(states) if len(states) > 1 else states[0]
        if greedy:
            return jax.device_get(run_search(greedy_search, step, state, jnp.asarray(src_len), max_len_bound=bound,
                                  **settings))
        return jax.device_get(run_search(beam_search, step, state, jnp.asarray(src_len), max_len_bound=bound,
                              **settings))


SETTINGS = dict(beam_size=4, n_best=3, length_penalty=0.6, min_len=0, max_len_a=1.0, max_len_b=2.0)


def test_two_model_ensemble_matches_torch_ref_float64():
    members = _members("float64")
    batch = make_batch(tiny_config("float64"), src_lens=SRC_LENS, tgt_lens=(1,) * len(SRC_LENS), seed=1)
    result = _jax_ensemble_search("float64", members, batch.src, batch.src_len, **SETTINGS)
    tensors = batch.torch()
    ensemble = Ensemble([reference for reference, _, _ in members]).eval()
    with torch.no_grad():
        state = ensemble.init_decode_state(tensors["src"], tensors["src_len"])
        expected = run_search(torch_beam_search, ensemble.decode_step, state, tensors["src_len"],
                                     max_len_bound=int(result.tokens.shape[-1]), **SETTINGS)
    np.testing.assert_array_equal(result.lengths, expected.lengths.numpy())
    np.testing.assert_array_equal(result.tokens, expected.tokens.numpy())
    finite = np.isfinite(expected.scores.numpy())
    np.testing.assert_allclose(result.scores[finite], expected.scores.numpy()[finite], rtol=1e-9, atol=0)
    # The attention recorded is the first model's, in both.
    np.testing.assert_allclose(result.attention, expected.attention.numpy(), rtol=0, atol=1e-12)
    # The ensemble is neither model alone.
    alone = [_jax_ensemble_search("float64", [member], batch.src, batch.src_len, **SETTINGS) for member in members]
    assert all(not np.array_equal(single.scores, result.scores) for single in alone)


@pytest.mark.parametrize("greedy", [False, True], ids=["beam", "greedy"])
def test_model_ensembled_with_itself_gives_exactly_its_own_nbest(greedy):
    members = _members("float32")
    batch = make_batch(tiny_config("float32"), src_lens=SRC_LENS, tgt_lens=(1,) * len(SRC_LENS), seed=2)
    settings = dict(SETTINGS, length_penalty=0.0) if not greedy else dict(length_penalty=0.0, max_len_a=1.0,
                                                                           max_len_b=2.0)
    single = _jax_ensemble_search("float32", members[:1], batch.src, batch.src_len, greedy, **settings)
    doubled = _jax_ensemble_search("float32", members[:1] * 2, batch.src, batch.src_len, greedy, **settings)
    for name in ("tokens", "lengths", "scores", "attention"):
        np.testing.assert_array_equal(getattr(doubled, name), getattr(single, name), err_msg=name)


def test_ensemble_scores_match_torch_ref_float64():
    members = _members("float64")
    rng = np.random.default_rng(3)
    src = [list(rng.integers(4, 11, int(rng.integers(0, 6)))) for _ in range(9)]
    tgt = [list(rng.integers(4, 13, int(rng.integers(0, 6)))) for _ in range(9)]
    examples = [Example(np.array(s + [EOS], np.int32), np.array(t, np.int32)) for s, t in zip(src, tgt, strict=True)]
    with precision("float64"):
        scorer = Scorer([g for _, g, _ in members], [p for _, _, p in members], None, None, batch_size=4,
                        bucket_width=4)
        ours = scorer.score_examples(examples)
        alone = Scorer([members[0][1]], [members[0][2]], None, None, batch_size=4).score_examples(examples)
    theirs = score_ids(Ensemble([reference for reference, _, _ in members]), src, tgt, batch_size=3)
    np.testing.assert_allclose([s.log_prob for s in ours], [s.log_prob for s in theirs], rtol=1e-10, atol=0)
    assert not np.allclose([s.log_prob for s in ours], [s.log_prob for s in alone])


def test_mean_of_probabilities_is_stable():
    a = np.array([[-1000.0, -1e-5, -np.inf, -np.inf]])
    b = np.array([[-1001.0, -2.0, -3.0, -np.inf]])
    with jax.enable_x64(True):
        jax_mean = np.asarray(mean_log_probs([jnp.asarray(a), jnp.asarray(b)]))
    for mean in (jax_mean, torch_mean_log_probs([torch.from_numpy(a), torch.from_numpy(b)]).numpy()):
        assert mean[0, 0] == pytest.approx(-1000 + np.log((1 + np.exp(-1.0)) / 2), rel=1e-12)  # exp(-1000) is 0
        assert mean[0, 1] == pytest.approx(np.log((np.exp(-1e-5) + np.exp(-2.0)) / 2), rel=1e-12)
        assert mean[0, 2] == pytest.approx(np.log(np.exp(-3.0) / 2), rel=1e-12)
        assert mean[0, 3] == -np.inf and not np.any(np.isnan(mean))
    c = np.array([[-999.0, -0.5, -np.inf, -np.inf]])  # three models: every one counts in the mean
    with jax.enable_x64(True):
        jax_mean = np.asarray(mean_log_probs([jnp.asarray(a), jnp.asarray(b), jnp.asarray(c)]))
    for mean in (jax_mean, torch_mean_log_probs([torch.from_numpy(x) for x in (a, b, c)]).numpy()):
        assert mean[0, 0] == pytest.approx(-999 + np.log((np.exp(-1.0) + np.exp(-2.0) + 1) / 3), rel=1e-12)
        assert mean[0, 1] == pytest.approx(np.log((np.exp(-1e-5) + np.exp(-2.0) + np.exp(-0.5)) / 3), rel=1e-12)
        assert mean[0, 2] == pytest.approx(np.log(np.exp(-3.0) / 3), rel=1e-12)
        assert mean[0, 3] == -np.inf and not np.any(np.isnan(mean))
    # ensemble_logits: log_softmax of them is the mean, and a model with itself gives its own logits.
    z1 = np.array([[2.0, -1.0, 0.5, 30.0]])
    z2 = np.array([[0.0, 1.0, -4.0, 2.0]])
    with jax.enable_x64(True):
        combined = np.asarray(jax.nn.log_softmax(ensemble_logits([jnp.asarray(z1), jnp.asarray(z2)])))
        assert np.array_equal(np.asarray(ensemble_logits([jnp.asarray(z1), jnp.asarray(z1)])), z1)
    probs = (np.exp(z1) / np.exp(z1).sum() + np.exp(z2) / np.exp(z2).sum()) / 2
    np.testing.assert_allclose(combined, np.log(probs), rtol=1e-12)
    torch_combined = torch.log_softmax(torch_ensemble_logits([torch.from_numpy(z1), torch.from_numpy(z2)]), -1)
    np.testing.assert_allclose(torch_combined.numpy(), np.log(probs), rtol=1e-12)


def test_ensemble_needs_the_same_tokenizers():
    chars = VocabularyTokenizer("char", list("abc"))
    check_shared_tokenizers([("W1", chars, chars), ("W2", VocabularyTokenizer("char", list("abc")), chars)])
    with pytest.raises(TokenizerError, match="the tgt tokenizer of W2 .* differs from that of W1"):
        check_shared_tokenizers([("W1", chars, chars), ("W2", chars, VocabularyTokenizer("char", list("abd")))])
    with pytest.raises(TokenizerError, match="the src tokenizer of W3"):
        check_shared_tokenizers([("W1", chars, chars), ("W2", chars, chars),
                                 ("W3", VocabularyTokenizer("word", list("abc")), chars)])
