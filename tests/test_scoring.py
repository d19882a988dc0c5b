"""Forced decoding: seq2seq_jax.decoding.scoring against torch_ref.score (per-pair sums within 1e-10 in float64, 1e-5 in
float32), and the beam's own score: scoring a beam-5 hypothesis (alpha = 0) gives the score the search gave it."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from parity_support import jax_params, make_pair, precision, tiny_config
from search_support import run_search

from seq2seq_jax.core.encoding import Example
from seq2seq_jax.core.pair_scores import PairScore, corpus_perplexity, format_score, read_pairs
from seq2seq_jax.decoding.scoring import Scorer
from seq2seq_jax.decoding.search import beam_search, max_len_bound_for
from torch_ref.score import score_ids

EOS = 3


@functools.cache
def _pair(dtype: str, copy: bool = False):
    config = tiny_config(dtype, copy_attention=True, src_vocab_size=13) if copy else tiny_config(
        dtype, decoder_style="luong", attention="general", dec_layers=2, enc_layers=2)
    reference, model = make_pair(config, "flax->torch", seed=3)
    with precision(dtype):
        graphdef, params = nnx.split(model, nnx.Param)[0], jax_params(model)
    return config, reference, graphdef, params


def _random_pairs(config, count=13, seed=0):
    """Ids with mixed lengths, an empty source and an empty target among them."""
    rng = np.random.default_rng(seed)
    src = [list(rng.integers(4, config.src_vocab_size, int(rng.integers(0, 7)))) for _ in range(count)]
    tgt = [list(rng.integers(4, config.tgt_vocab_size, int(rng.integers(0, 6)))) for _ in range(count)]
    src[2], tgt[5] = [], []
    return src, tgt


def _jax_scores(dtype, src, tgt, copy=False, batch_size=6):
    _, _, graphdef, params = _pair(dtype, copy)
    examples = [Example(np.array(s + [EOS], np.int32), np.array(t, np.int32)) for s, t in zip(src, tgt, strict=True)]
    with precision(dtype):
        # Padded to multiples of 8 here, exactly in torch_ref (batches of 5): padding must not matter.
        scorer = Scorer([graphdef], [params], None, None, batch_size=batch_size, bucket_width=8)
        return scorer.score_examples(examples)


@pytest.mark.parametrize(("dtype", "copy"), [("float64", False), ("float32", False), ("float64", True)],
                         ids=["float64", "float32", "float64-copy"])
def test_scores_match_torch_ref(dtype, copy):
    config, reference, _, _ = _pair(dtype, copy)
    src, tgt = _random_pairs(config)
    ours = _jax_scores(dtype, src, tgt, copy)
    theirs = score_ids(reference, src, tgt, batch_size=5)
    tolerance = 1e-10 if dtype == "float64" else 1e-5
    assert [s.count for s in ours] == [len(t) + 1 for t in tgt] == [s.count for s in theirs]
    np.testing.assert_allclose([s.log_prob for s in ours], [s.log_prob for s in theirs], rtol=tolerance, atol=0)
    assert all(s.log_prob < 0 for s in ours)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_scoring_the_beam_output_gives_the_beams_score(dtype):
    """alpha = 0: a finished hypothesis' score is its summed log-probs, EOS included -- what scoring computes."""
    config, _, graphdef, params = _pair(dtype)
    src, _ = _random_pairs(config, count=6, seed=1)
    src = [s or [5] for s in src]
    width = max(len(s) for s in src) + 1
    batch = np.zeros((len(src), width), np.int32)
    for row, ids in enumerate(src):
        batch[row, :len(ids) + 1] = ids + [EOS]
    src_len = np.array([len(s) + 1 for s in src], np.int32)
    with precision(dtype):
        model = nnx.merge(graphdef, params)
        state, step = model.search_state(jnp.asarray(batch), jnp.asarray(src_len))
        result = jax.device_get(run_search(beam_search, step, state, jnp.asarray(src_len), beam_size=5, n_best=5,
                                            length_penalty=0.0, max_len_a=1.0, max_len_b=3.0,
                                            max_len_bound=max_len_bound_for(src_len, 1.0, 3.0)))
    pairs, beam_scores = [], []
    for row in range(len(src)):
        for rank in range(5):
            length = int(result.lengths[row, rank])
            tokens = result.tokens[row, rank, :length].tolist()
            if length and tokens[-1] == EOS:  # hypotheses cut at the length limit have no EOS to score
                pairs.append((src[row], tokens[:-1]))
                beam_scores.append(float(result.scores[row, rank]))
    assert len(pairs) >= 10
    scores = _jax_scores(dtype, [s for s, _ in pairs], [t for _, t in pairs])
    np.testing.assert_allclose([s.log_prob for s in scores], beam_scores, rtol=1e-10 if dtype == "float64" else 1e-5)


def test_pair_scores_format_and_perplexity(tmp_path):
    scores = [PairScore(-2.0, 4), PairScore(-1.0, 1)]
    assert format_score(scores[0]) == "-2.000000\t-0.500000\t4"
    assert format_score(scores[0], as_json=True) == '{"log_prob": -2.0, "mean": -0.5, "count": 4}'
    assert corpus_perplexity(scores) == pytest.approx(math.exp(3.0 / 5))
    (tmp_path / "src").write_text("a\nb\nc\n")
    (tmp_path / "tgt").write_text("a\nb\n")
    with pytest.raises(ValueError, match=r"tgt has 2 lines but .*src has 3: line 3 of .*src has no counterpart"):
        read_pairs(tmp_path / "src", tmp_path / "tgt")


def test_torch_score_keeps_input_order():
    """score_ids sorts pairs into batches by length and puts them back in input order."""
    config, reference, _, _ = _pair("float64")
    src, tgt = _random_pairs(config, count=7, seed=2)
    together = score_ids(reference, src, tgt, batch_size=3)
    reversed_scores = score_ids(reference, src[::-1], tgt[::-1], batch_size=2)[::-1]
    np.testing.assert_allclose([s.log_prob for s in together], [s.log_prob for s in reversed_scores], rtol=1e-12)
