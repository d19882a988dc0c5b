"""Search (seq2seq_jax.decoding.search) on a toy decoder: greedy == beam K=1 == an argmax loop, batch invariance,
n-best scores, length limits, n-gram bans, exhaustive search, sampling, and one trace per shape.

The toy decoder (``toy_step``) is written once for numpy and jax.numpy: an embedding, a tanh RNN with
dot-product attention over a per-sentence random "memory" (masked to the real source length, so the
state has an ``attention`` leaf), and an output projection. The numpy twin gives independent reference
computations (plain argmax loop, teacher forcing, brute force).
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from search_support import run_search

from seq2seq_jax.core.config import DecodeConfig
from seq2seq_jax.decoding.search import (
    BOS_ID,
    EOS_ID,
    BeamResult,
    beam_search,
    compaction_sizes,
    first_max_index,
    greedy_search,
    max_len_bound_for,
    max_len_for,
    sample,
    top_k,
)

EMBED, HIDDEN, MEMORY = 8, 16, 6
# The toy searches are tiny: XLA's backend optimisations cost far more compile time than they save.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def toy_weights(vocab: int, seed: int = 0, eos_bias: float = 0.0, scale: float = 1.0) -> dict[str, np.ndarray]:
    """Random float64 weights; ``eos_bias`` is added to the EOS output bias."""
    rng = np.random.default_rng(seed)
    normal = lambda *shape: rng.normal(0.0, 1.0, shape) / np.sqrt(shape[0])
    weights = {
        "embed": rng.normal(0.0, 1.0, (vocab, EMBED)),
        "w_x": normal(EMBED, HIDDEN), "w_h": normal(HIDDEN, HIDDEN), "w_c": normal(MEMORY, HIDDEN),
        "w_query": normal(HIDDEN, MEMORY), "w_init": normal(MEMORY, HIDDEN),
        "w_out": scale * 2.0 * normal(HIDDEN + MEMORY, vocab), "b_out": 0.5 * rng.normal(0.0, 1.0, vocab),
    }
    weights["b_out"][EOS_ID] += eos_bias
    return weights


def toy_step(xp, weights, state, tokens):
    """One decoder step; ``xp`` is numpy or jax.numpy. state: h [N, H], memory [N, S, D], src_mask [N, S]."""
    h, memory, mask = state["h"], state["memory"], state["src_mask"]
    scores = xp.einsum("nsd,nd->ns", memory, h @ weights["w_query"])
    scores = xp.where(mask, scores, -xp.inf)
    scores = xp.exp(scores - scores.max(axis=-1, keepdims=True))
    attention = scores / scores.sum(axis=-1, keepdims=True)
    context = xp.einsum("ns,nsd->nd", attention, memory)
    h = xp.tanh(weights["embed"][tokens] @ weights["w_x"] + h @ weights["w_h"] + context @ weights["w_c"])
    logits = xp.concatenate([h, context], axis=-1) @ weights["w_out"] + weights["b_out"]
    return logits, {"h": h, "memory": memory, "src_mask": mask, "attention": attention}


def toy_init_state(xp, weights, memory, src_len):
    """memory [B, S, D] (padding may hold garbage), src_len [B] -> state with leading axis B."""
    mask = xp.arange(memory.shape[1])[None, :] < src_len[:, None]
    mean = (memory * mask[:, :, None]).sum(axis=1) / src_len[:, None]
    return {"h": xp.tanh(mean @ weights["w_init"]), "memory": memory, "src_mask": mask,
            "attention": xp.zeros(mask.shape, memory.dtype)}


def sentence_memories(src_lengths, seed=1):
    """One random memory [S_i, D] per sentence (the same sentence always gets the same memory)."""
    return [np.random.default_rng(seed * 1000 + i).normal(size=(length, MEMORY))
            for i, length in enumerate(src_lengths)]


def pad_batch(memories, pad_to=None, garbage_seed=7):
    """Stack memories into [B, S_max, D]; padded positions get random garbage (masking must hide it)."""
    width = pad_to or max(len(m) for m in memories)
    rng = np.random.default_rng(garbage_seed)
    batch = rng.normal(size=(len(memories), width, MEMORY)) * 10
    for i, memory in enumerate(memories):
        batch[i, :len(memory)] = memory
    return batch, np.array([len(m) for m in memories])


class JaxToy:
    """The toy decoder's weights; searches take them as jit arguments, so compiled searches are shared."""

    def __init__(self, weights):
        self.np_weights = weights
        self.weights = {k: jnp.asarray(v, jnp.float32) for k, v in weights.items()}


TRACES: list[tuple] = []  # (kind, settings, memory shape) each time a compiled search is traced


def make_search(toy: JaxToy, kind: str, **settings):
    """A jitted search ``(memory, src_len) -> BeamResult`` for this toy; everything but the data is static."""
    search = _compiled_search(kind, tuple(sorted(settings.items())))
    return functools.partial(search, toy.weights)


@functools.cache
def _compiled_search(kind: str, settings: tuple):
    search = {"beam": beam_search, "greedy": greedy_search}[kind]

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def run(weights, memory, src_len):
        TRACES.append((kind, settings, memory.shape))
        decode_step = lambda state, tokens: toy_step(jnp, weights, state, tokens)
        init_state = toy_init_state(jnp, weights, memory.astype(jnp.float32), src_len)
        return run_search(search, decode_step, init_state, src_len, **dict(settings))

    return run


# ---------------------------------------------------------------------------------------------------------
# numpy references
# ---------------------------------------------------------------------------------------------------------


def log_softmax(x):
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def lp(length, alpha):
    return ((5.0 + length) / 6.0) ** alpha


def repeats_ngram(tokens, n):
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return len(grams) != len(set(grams))


def numpy_argmax_loop(weights, memory, src_len, max_len, min_len=0, ngram=0):
    """Plain Python greedy decoding of one sentence: (tokens, summed log-prob)."""
    state = toy_init_state(np, weights, memory[None], np.array([src_len]))
    tokens, total = [], 0.0
    while len(tokens) < max_len:
        logits, state = toy_step(np, weights, state, np.array([tokens[-1] if tokens else BOS_ID]))
        log_probs = log_softmax(logits[0])
        if len(tokens) + 1 < min_len:
            log_probs[EOS_ID] = -np.inf
        for v in range(len(log_probs)):
            if ngram and len(tokens) >= ngram - 1 and repeats_ngram(tokens + [v], ngram):
                log_probs[v] = -np.inf
        token = int(np.argmax(log_probs))
        tokens.append(token)
        total += log_probs[token]
        if token == EOS_ID:
            break
    return tokens, total


def teacher_forced_log_prob(weights, memory, src_len, tokens):
    """Summed log-probability of ``tokens`` given one sentence's memory (numpy, float64)."""
    state = toy_init_state(np, weights, memory[None], np.array([src_len]))
    total, previous = 0.0, BOS_ID
    for token in tokens:
        logits, state = toy_step(np, weights, state, np.array([previous]))
        total += log_softmax(logits[0])[token]
        previous = token
    return total


SRC_LENGTHS = [3, 1, 6, 4, 2]
MAX_LEN_A, MAX_LEN_B = 1.0, 3.0
BEAM = dict(beam_size=4, n_best=4, length_penalty=0.6)  # the common beam setting (one compiled search)
BANNED = dict(min_len=4, no_repeat_ngram_size=2)


@pytest.fixture(scope="module")
def toy():
    return JaxToy(toy_weights(vocab=12, eos_bias=1.0))


@pytest.fixture(scope="module")
def batch():
    memories = sentence_memories(SRC_LENGTHS)
    memory, src_len = pad_batch(memories)
    return memories, memory, src_len


def settings(**overrides):
    values = dict(max_len_a=MAX_LEN_A, max_len_b=MAX_LEN_B,
                  max_len_bound=max_len_bound_for(SRC_LENGTHS, MAX_LEN_A, MAX_LEN_B))
    values.update(overrides)
    return values


def host(result):
    return jax.tree_util.tree_map(np.asarray, result)


# ---------------------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------------------


def test_max_len_helpers_match_decode_config():
    for a, b, src in [(1.5, 10.0, 7), (1.1, 0.0, 10), (0.0, 0.0, 5), (0.3, 0.2, 1)]:
        assert max_len_for(src, a, b) == DecodeConfig(max_len_a=a, max_len_b=b).max_len(src)
    assert max_len_for(25, 2.2, 0.0) == 56  # float64 rounding: 2.2 * 25 = 55.00000000000001
    assert max_len_bound_for([3, 25, 2], 2.2, 0.0) == 56
    # Inside jit the per-sentence limit comes from the same float64 formula (float32 would give 55),
    # clipped to max_len_bound.
    toy = JaxToy(toy_weights(vocab=12, eos_bias=-50.0))
    memory, src_len = pad_batch(sentence_memories([25, 3, 40]))
    result = host(make_search(toy, "greedy", max_len_a=2.2, max_len_b=0.0, max_len_bound=60)(memory, src_len))
    assert result.lengths[:, 0].tolist() == [56, max_len_for(3, 2.2, 0.0), 60]


@pytest.mark.parametrize("constraints", [{}, BANNED], ids=["plain", "banned"])
def test_beam1_equals_greedy_equals_argmax_loop(toy, batch, constraints):
    memories, memory, src_len = batch
    beam = host(make_search(toy, "beam", beam_size=1, length_penalty=0.0, **settings(**constraints))(memory, src_len))
    greedy = host(make_search(toy, "greedy", **settings(**constraints))(memory, src_len))
    np.testing.assert_array_equal(beam.tokens, greedy.tokens)
    np.testing.assert_array_equal(beam.lengths, greedy.lengths)
    np.testing.assert_allclose(beam.scores, greedy.scores, atol=1e-5)
    np.testing.assert_allclose(beam.attention, greedy.attention, atol=1e-6)
    for i, sentence in enumerate(memories):
        max_len = max_len_for(len(sentence), MAX_LEN_A, MAX_LEN_B)
        tokens, total = numpy_argmax_loop(toy.np_weights, sentence, len(sentence), max_len,
                                          min_len=constraints.get("min_len", 0),
                                          ngram=constraints.get("no_repeat_ngram_size", 0))
        length = greedy.lengths[i, 0]
        assert greedy.tokens[i, 0, :length].tolist() == tokens
        assert not greedy.tokens[i, 0, length:].any()
        assert greedy.scores[i, 0] == pytest.approx(total, abs=1e-5)
    # The batch exercises both ends: some sentences stop at EOS, some at their length limit.
    ends_with_eos = greedy.tokens[np.arange(len(memories)), 0, greedy.lengths[:, 0] - 1] == EOS_ID
    assert ends_with_eos.any() and not ends_with_eos.all()


@pytest.mark.parametrize("kind", ["greedy", "beam"])
def test_batch_invariance(toy, batch, kind):
    memories, memory, src_len = batch
    search = make_search(toy, kind, **settings(**(BEAM if kind == "beam" else {})))
    together = host(search(memory, src_len))
    for i, sentence in enumerate(memories):
        # Alone: batch of one, padded to the same width (one compiled shape) with different garbage.
        alone_memory, alone_len = pad_batch([sentence], pad_to=memory.shape[1], garbage_seed=100 + i)
        alone = host(search(alone_memory, alone_len))
        np.testing.assert_array_equal(alone.tokens[0], together.tokens[i])
        np.testing.assert_array_equal(alone.lengths[0], together.lengths[i])
        np.testing.assert_allclose(alone.scores[0], together.scores[i], atol=1e-5)
        np.testing.assert_allclose(alone.attention[0], together.attention[i], atol=1e-5)
        assert not together.attention[i, :, :, len(sentence):].any()


def test_nbest_sorted_and_scores_match_teacher_forcing(toy, batch):
    memories, memory, src_len = batch
    alpha = BEAM["length_penalty"]
    result = host(make_search(toy, "beam", **settings(**BEAM))(memory, src_len))
    for i, sentence in enumerate(memories):
        max_len = max_len_for(len(sentence), MAX_LEN_A, MAX_LEN_B)
        assert np.all(np.diff(result.scores[i]) <= 0), result.scores[i]
        hypotheses = set()
        for slot in range(4):
            length = result.lengths[i, slot]
            tokens = result.tokens[i, slot, :length].tolist()
            assert 1 <= length <= max_len
            assert EOS_ID not in tokens[:-1] and (tokens[-1] == EOS_ID or length == max_len)
            assert not result.tokens[i, slot, length:].any()
            total = teacher_forced_log_prob(toy.np_weights, sentence, len(sentence), tokens)
            assert result.scores[i, slot] == pytest.approx(total / lp(length, alpha), abs=1e-5)
            # Attention rows: distributions over the real source for generated steps, zeros after.
            np.testing.assert_allclose(result.attention[i, slot, :length, :len(sentence)].sum(-1), 1.0, atol=1e-5)
            assert not result.attention[i, slot, length:].any()
            hypotheses.add(tuple(tokens))
        assert len(hypotheses) == 4


def test_min_len_is_respected(batch):
    _, memory, src_len = batch
    toy = JaxToy(toy_weights(vocab=12, eos_bias=4.0))  # EOS is the likely first token
    free = host(make_search(toy, "beam", **settings(**BEAM))(memory, src_len))
    assert (free.lengths < 4).any()
    for kind, options in [("beam", dict(min_len=4, **BEAM)), ("greedy", BANNED)]:
        result = host(make_search(toy, kind, **settings(**options))(memory, src_len))
        max_lens = np.array([max_len_for(s, MAX_LEN_A, MAX_LEN_B) for s in SRC_LENGTHS])
        assert np.all(result.lengths >= np.minimum(4, max_lens)[:, None])
        eos_at_4 = (result.lengths == 4) & (result.tokens[:, :, 3] == EOS_ID)
        assert eos_at_4.any()  # EOS comes as soon as it is allowed
        for i, slot in np.ndindex(result.lengths.shape):
            assert EOS_ID not in result.tokens[i, slot, :result.lengths[i, slot] - 1].tolist()


def test_max_len_is_hit_when_eos_is_unlikely(batch):
    _, memory, src_len = batch
    toy = JaxToy(toy_weights(vocab=12, eos_bias=-30.0))
    max_lens = np.array([max_len_for(s, MAX_LEN_A, MAX_LEN_B) for s in SRC_LENGTHS])
    for kind, options in [("beam", BEAM), ("greedy", {})]:
        result = host(make_search(toy, kind, **settings(**options))(memory, src_len))
        np.testing.assert_array_equal(result.lengths, np.broadcast_to(max_lens[:, None], result.lengths.shape))
        assert not (result.tokens == EOS_ID).any()
        assert np.isfinite(result.scores).all()


def scripted_step(state, tokens):
    """A model without attention whose distribution depends only on the step: first EOS 0.5, token 2 0.45;
    afterwards EOS 0.97."""
    first = jnp.log(jnp.array([0.02, 0.03, 0.45, 0.5]))
    later = jnp.log(jnp.array([0.01, 0.01, 0.01, 0.97]))
    logits = jnp.where((state["step"] == 0)[:, None], first, later)
    return logits, {"step": state["step"] + 1}


@pytest.mark.parametrize(("alpha", "expected"), [(0.0, [EOS_ID]), (2.0, [2, EOS_ID])])
def test_stopping_bound_uses_the_longest_allowed_length(alpha, expected):
    # K = 1. After step 1 the finished [EOS] scores log 0.5 = -0.69 and the alive [2] has sum log 0.45.
    # alpha = 0: bound -0.80 <= -0.69, done (the argmax answer). alpha = 2: the bound is
    # -0.80 / lp(10) = -0.13 > -0.69, so the search goes on and finds [2, EOS]:
    # (log 0.45 + log 0.97) / lp(2) = -0.61, better than -0.69.
    result = host(jax.jit(compiler_options=FAST_COMPILE)(lambda src_len: run_search(beam_search,
        scripted_step, {"step": jnp.zeros(src_len.shape, jnp.int32)}, src_len, beam_size=1, length_penalty=alpha,
        max_len_a=0.0, max_len_b=10.0, max_len_bound=10))(np.array([1])))
    assert result.tokens[0, 0, :result.lengths[0, 0]].tolist() == expected
    expected_sum = np.log(0.5) if alpha == 0 else np.log(0.45) + np.log(0.97)
    assert result.scores[0, 0] == pytest.approx(expected_sum / lp(len(expected), alpha), abs=1e-5)
    assert result.attention is None


@pytest.mark.parametrize(("kind", "ngram"), [("beam", 1), ("beam", 2), ("beam", 3), ("greedy", 2)])
def test_no_repeat_ngram(batch, kind, ngram):
    _, memory, src_len = batch
    toy = JaxToy(toy_weights(vocab=12, eos_bias=-4.0))
    options = BEAM if kind == "beam" else {}

    def repeats(result):
        return [repeats_ngram(result.tokens[i, s, :result.lengths[i, s]].tolist(), ngram)
                for i, s in np.ndindex(result.lengths.shape)]

    assert any(repeats(host(make_search(toy, kind, **settings(**options))(memory, src_len))))  # work to do
    banned = dict(no_repeat_ngram_size=ngram, **options) if kind == "beam" else BANNED  # BANNED has n = 2
    result = host(make_search(toy, kind, **settings(**banned))(memory, src_len))
    assert not any(repeats(result))
    assert np.isfinite(result.scores).all()


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_large_beam_finds_exhaustive_best(alpha):
    vocab, max_len = 4, 4
    weights = toy_weights(vocab=vocab, seed=3, eos_bias=-0.5)
    toy = JaxToy(weights)
    sentence = sentence_memories([3], seed=5)[0]
    # Every hypothesis: k non-EOS tokens then EOS (k < max_len), or max_len non-EOS tokens (cut at the limit).
    others = [v for v in range(vocab) if v != EOS_ID]
    candidates = [list(p) + [EOS_ID] for k in range(max_len) for p in itertools.product(others, repeat=k)]
    candidates += [list(p) for p in itertools.product(others, repeat=max_len)]
    scored = sorted(((teacher_forced_log_prob(weights, sentence, 3, c) / lp(len(c), alpha), c) for c in candidates),
                    key=lambda pair: -pair[0])
    beams = 32  # >= 3**3 prefixes, so nothing is ever pruned
    search = make_search(toy, "beam", beam_size=beams, n_best=10, length_penalty=alpha, max_len_a=0.0,
                         max_len_b=float(max_len), max_len_bound=max_len)
    result = host(search(sentence[None], np.array([3])))
    for slot, (score, tokens) in enumerate(scored[:10]):
        assert result.tokens[0, slot, :result.lengths[0, slot]].tolist() == tokens
        assert result.scores[0, slot] == pytest.approx(score, abs=1e-5)


@pytest.fixture(scope="module")
def sampler(toy):
    @functools.partial(jax.jit, static_argnames=("temperature", "top_k", "top_p"), compiler_options=FAST_COMPILE)
    def run(memory, src_len, rng, temperature=1.0, top_k=0, top_p=1.0):
        decode_step = lambda state, tokens: toy_step(jnp, toy.weights, state, tokens)
        init_state = toy_init_state(jnp, toy.weights, memory.astype(jnp.float32), src_len)
        result = run_search(sample, decode_step, init_state, src_len, rng, temperature=temperature, top_k=top_k,
                            top_p=top_p, **settings())
        assert isinstance(result, BeamResult) and result.tokens.shape[1] == 1  # every search's result type
        return jax.tree_util.tree_map(lambda x: x[:, 0], result)  # the one sample of each sentence

    return run


def test_sampling_is_reproducible_and_scores_are_model_log_probs(toy, batch, sampler):
    memories, memory, src_len = batch
    hot = dict(temperature=2.0, top_k=2)  # shares its compiled sampler with the top_k=2 test below
    first = host(sampler(memory, src_len, jax.random.key(0), **hot))
    again = host(sampler(memory, src_len, jax.random.key(0), **hot))
    for x, y in zip(first, again, strict=True):
        np.testing.assert_array_equal(x, y)
    others = [host(sampler(memory, src_len, jax.random.key(seed), **hot))[0] for seed in (1, 2, 3)]
    assert any(not np.array_equal(first[0], other) for other in others)
    tokens, lengths, scores, attention = first
    for i, sentence in enumerate(memories):
        row = tokens[i, :lengths[i]].tolist()
        assert EOS_ID not in row[:-1] and not tokens[i, lengths[i]:].any()
        assert scores[i] == pytest.approx(teacher_forced_log_prob(toy.np_weights, sentence, len(sentence), row),
                                          abs=1e-5)
    assert attention.shape == (len(memories), tokens.shape[1], memory.shape[1])


@pytest.mark.parametrize("options", [dict(top_k=2), dict(top_p=0.6)], ids=["top_k=2", "top_p=0.6"])
def test_sampled_tokens_stay_in_the_kept_set(toy, batch, sampler, options):
    memories, memory, src_len = batch
    chosen_ranks = []
    for seed in range(4):
        tokens, lengths, _, _ = host(sampler(memory, src_len, jax.random.key(seed), temperature=2.0, **options))
        for i, sentence in enumerate(memories):
            state = toy_init_state(np, toy.np_weights, sentence[None], np.array([len(sentence)]))
            previous = BOS_ID
            for token in tokens[i, :lengths[i]]:
                logits, state = toy_step(np, toy.np_weights, state, np.array([previous]))
                probs = np.exp(log_softmax(logits[0] / 2.0))
                order = np.argsort(-probs)
                rank = int(np.nonzero(order == token)[0][0])
                if "top_k" in options:
                    assert rank < options["top_k"]
                else:  # the mass of the more likely tokens is below top_p
                    assert probs[order[:rank]].sum() < options["top_p"] + 1e-6
                chosen_ranks.append(rank)
                previous = token
    assert max(chosen_ranks) > 0  # it did sample, not just take the argmax


@pytest.mark.parametrize("options", [dict(top_k=1), dict(temperature=1e-4)], ids=["top_k=1", "cold"])
def test_degenerate_sampling_is_greedy(toy, batch, sampler, options):
    _, memory, src_len = batch
    greedy = host(make_search(toy, "greedy", **settings())(memory, src_len))
    for seed in (0, 1):
        tokens, lengths, scores, _ = host(sampler(memory, src_len, jax.random.key(seed), **options))
        np.testing.assert_array_equal(tokens, greedy.tokens[:, 0])
        np.testing.assert_array_equal(lengths, greedy.lengths[:, 0])
        np.testing.assert_allclose(scores, greedy.scores[:, 0], atol=1e-5)


def test_jit_traces_once_per_shape(toy, batch):
    _, memory, src_len = batch
    search = make_search(toy, "beam", **settings(**BEAM))
    key = ("beam", tuple(sorted(settings(**BEAM).items())))
    count = lambda: sum(trace[:2] == key for trace in TRACES)
    before = count()
    first = host(search(memory, src_len))
    after_first = count()
    assert after_first - before <= 1  # 0 if an earlier test compiled this shape
    other_memory, other_len = pad_batch(sentence_memories([6, 1, 4, 2, 5], seed=9), pad_to=memory.shape[1])
    second = host(search(other_memory, other_len))
    assert count() == after_first  # new values, same shapes: no new trace
    assert not np.array_equal(first.tokens, second.tokens)
    search(*pad_batch(sentence_memories([2, 5]), pad_to=memory.shape[1]))
    assert count() == after_first + 1  # a new batch size: one new trace


def test_a_decode_step_that_breaks_the_state_contract_is_reported():
    src_len = jnp.array([2, 3])
    options = dict(beam_size=2, length_penalty=0.0, max_len_a=1.0, max_len_b=1.0, max_len_bound=4)
    cast = lambda state, tokens: (jnp.zeros((tokens.shape[0], 5)), {"h": state["h"].astype(jnp.float16)})
    with pytest.raises(ValueError, match=r"state\['h'\] from float32\[4, 3\] to float16\[4, 3\]"):
        run_search(beam_search, cast, {"h": jnp.zeros((2, 3))}, src_len, **options)
    flat_logits = lambda state, tokens: (jnp.zeros((5,)), state)
    with pytest.raises(ValueError, match=r"logits \[4, V\]"):
        run_search(beam_search, flat_logits, {"h": jnp.zeros((2, 3))}, src_len, **options)


@pytest.mark.parametrize("width, k", [(40_000, 10), (1000, 10), (130, 4), (64 * 3, 6), (50, 10)])
def test_top_k_without_sort_equals_lax_top_k(width, k):
    """``top_k`` (chunk maxima, then a small sort) returns exactly ``lax.top_k``'s values and indices,
    ties to the lower index included: values drawn from a few levels, and rows that are mostly or all -inf."""
    rng = np.random.default_rng(width + k)
    values = rng.integers(0, 5, (6, width)).astype(np.float32) - 10.0
    values[1] = -np.inf
    values[2, rng.permutation(width)[: width - k // 2]] = -np.inf  # fewer than k finite entries
    values[3] = rng.normal(size=width)
    values[4, :] = -3.0  # all tied
    values[5, -1] = 7.0  # the maximum in the last, padded chunk
    expected_values, expected_indices = jax.lax.top_k(jnp.asarray(values), k)
    got_values, got_indices = jax.jit(top_k, static_argnums=1)(jnp.asarray(values), k)
    np.testing.assert_array_equal(np.asarray(got_indices), np.asarray(expected_indices))
    np.testing.assert_array_equal(np.asarray(got_values), np.asarray(expected_values))


def test_first_max_index_equals_argmax():
    """``first_max_index`` is ``argmax``: the first maximum (ties, +inf), index 0 for a row of -inf, the first
    NaN in a row holding one."""
    rng = np.random.default_rng(3)
    values = rng.integers(0, 4, (8, 300)).astype(np.float32)  # many ties
    values[1] = -np.inf
    values[2, [7, 250]] = np.inf
    values[3, [40, 9]] = np.nan
    values[4, [5, 6]] = [np.inf, np.nan]
    values[5] = rng.normal(size=300)
    expected = np.asarray(jnp.argmax(jnp.asarray(values), axis=-1))
    got = np.asarray(jax.jit(first_max_index)(jnp.asarray(values)))
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, expected)
    assert got[:5].tolist() == [expected[0], 0, 7, 9, 6]


def test_compaction_sizes():
    assert compaction_sizes(64) == (32, 16, 8)
    assert compaction_sizes(40) == (20, 10)
    assert compaction_sizes(15) == ()
    assert compaction_sizes(1) == ()


def test_compacted_greedy_equals_the_full_loop():
    """``greedy_search(..., compact=True)`` moves unfinished rows to loops of 20, then 10 rows (40 sentences
    that stop at EOS or at limits from 4 to 27 tokens) and returns what the loop over all rows returns, row by
    row in place: the same tokens and lengths, the scores and attention up to float rounding; with bans,
    target prefixes of mixed lengths and a length penalty too. Every row also equals the numpy argmax loop."""
    toy = JaxToy(toy_weights(vocab=12, eos_bias=-1.0, seed=5))
    lengths = [1 + (7 * i) % 12 for i in range(40)]
    memories = sentence_memories(lengths, seed=4)
    memory, src_len = pad_batch(memories)
    limits = dict(max_len_a=2.0, max_len_b=3.0, max_len_bound=max_len_bound_for(lengths, 2.0, 3.0))
    prefix_rng = np.random.default_rng(6)
    prefix = prefix_rng.integers(4, 12, (40, 3)).astype(np.int32)
    prefix_len = np.where(np.arange(40) % 3 == 0, 0, np.arange(40) % 4).astype(np.int32)
    rows_seen = []

    @functools.partial(jax.jit, static_argnames=("compact",), compiler_options=FAST_COMPILE)
    def run(memory, src_len, prefix, prefix_len, compact):
        def decode_step(state, tokens):
            rows_seen.append(tokens.shape[0])
            return toy_step(jnp, toy.weights, state, tokens)

        state = toy_init_state(jnp, toy.weights, memory.astype(jnp.float32), src_len)
        return run_search(greedy_search, decode_step, state, src_len, length_penalty=0.6, min_len=2,
                          no_repeat_ngram_size=3, prefix=prefix, prefix_len=prefix_len, compact=compact, **limits)

    args = (memory, src_len, prefix, prefix_len)
    full = host(run(*args, compact=False))
    assert set(rows_seen) == {40}
    rows_seen.clear()
    compacted = host(run(*args, compact=True))
    assert {40, 20, 10} <= set(rows_seen)
    finished = full.lengths[:, 0]
    assert (finished < 10).sum() > 10 and (finished > 20).any()  # rows finish early and late
    np.testing.assert_array_equal(compacted.tokens, full.tokens)
    np.testing.assert_array_equal(compacted.lengths, full.lengths)
    np.testing.assert_allclose(compacted.scores, full.scores, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(compacted.attention, full.attention, atol=1e-6)
    plain = host(run(memory, src_len, prefix, np.zeros(40, np.int32), compact=True))
    for i, sentence in enumerate(memories):
        max_len = max_len_for(len(sentence), 2.0, 3.0)
        tokens, _ = numpy_argmax_loop(toy.np_weights, sentence, len(sentence), max_len, min_len=2, ngram=3)
        assert plain.tokens[i, 0, :plain.lengths[i, 0]].tolist() == tokens
        assert compacted.tokens[i, 0, :prefix_len[i]].tolist() == prefix[i, :prefix_len[i]].tolist()
