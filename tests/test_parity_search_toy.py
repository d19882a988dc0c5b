"""Beam search parity: seq2seq_jax.decoding.search.beam_search (one lax.while_loop) against torch_ref.search.beam_search
(a Python loop) on the same toy decoder written in both frameworks.

float64 (JAX under ``jax.enable_x64``): identical n-best token ids and lengths, scores and attention within 1e-9.
float32: identical ids, scores within 1e-4.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from search_support import run_search

from seq2seq_jax.decoding.search import EOS_ID, beam_search, max_len_bound_for, max_len_for
from torch_ref.search import beam_search as torch_beam_search
from torch_ref.search import greedy_search as torch_greedy_search

VOCAB, EMBED, HIDDEN, MEMORY = 10, 8, 16, 6
SRC_LENGTHS = [2, 5, 1, 4, 3, 6]
MAX_LEN_A, MAX_LEN_B = 1.0, 2.0
MAX_LENS = np.array([max_len_for(s, MAX_LEN_A, MAX_LEN_B) for s in SRC_LENGTHS])
MAX_LEN_BOUND = max_len_bound_for(SRC_LENGTHS, MAX_LEN_A, MAX_LEN_B)


def toy_weights(eos_bias: float, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    normal = lambda *shape: rng.normal(0.0, 1.0, shape) / np.sqrt(shape[0])
    weights = {
        "embed": rng.normal(0.0, 1.0, (VOCAB, EMBED)), "w_x": normal(EMBED, HIDDEN), "w_h": normal(HIDDEN, HIDDEN),
        "w_c": normal(MEMORY, HIDDEN), "w_query": normal(HIDDEN, MEMORY), "w_init": normal(MEMORY, HIDDEN),
        "w_out": 2.0 * normal(HIDDEN + MEMORY, VOCAB), "b_out": 0.5 * rng.normal(0.0, 1.0, VOCAB),
    }
    weights["b_out"][EOS_ID] += eos_bias
    return weights


def toy_batch(seed: int = 1):
    """memory [B, S_max, D] with garbage in the padding, src_len [B]."""
    rng = np.random.default_rng(seed)
    memory = 10 * rng.normal(size=(len(SRC_LENGTHS), max(SRC_LENGTHS), MEMORY))
    for i, length in enumerate(SRC_LENGTHS):
        memory[i, :length] = rng.normal(size=(length, MEMORY))
    return memory, np.array(SRC_LENGTHS)


# The toy searches are tiny: XLA's backend optimisations cost far more compile time than they save.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


# --- the toy decoder in JAX ---------------------------------------------------------------------------------


def jax_decode_step(weights, state, tokens):
    """state: h [N, H], memory [N, S, D], src_mask [N, S], attention [N, S]; tokens [N]."""
    h, memory, mask = state["h"], state["memory"], state["src_mask"]
    scores = jnp.where(mask, jnp.einsum("nsd,nd->ns", memory, h @ weights["w_query"]), -jnp.inf)
    attention = jax.nn.softmax(scores, axis=-1)
    context = jnp.einsum("ns,nsd->nd", attention, memory)
    h = jnp.tanh(weights["embed"][tokens] @ weights["w_x"] + h @ weights["w_h"] + context @ weights["w_c"])
    logits = jnp.concatenate([h, context], axis=-1) @ weights["w_out"] + weights["b_out"]
    return logits, {"h": h, "memory": memory, "src_mask": mask, "attention": attention}


def jax_init_state(weights, memory, src_len):
    mask = jnp.arange(memory.shape[1])[None, :] < src_len[:, None]
    mean = (memory * mask[:, :, None]).sum(axis=1) / src_len[:, None]
    return {"h": jnp.tanh(mean @ weights["w_init"]), "memory": memory, "src_mask": mask,
            "attention": jnp.zeros(mask.shape, memory.dtype)}


@functools.cache
def jax_search(settings: tuple):
    """One jitted search per settings tuple (shared by every test that uses it); weights are arguments."""

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def run(weights, memory, src_len):
        decode_step = functools.partial(jax_decode_step, weights)
        return run_search(beam_search, decode_step, jax_init_state(weights, memory, src_len), src_len, **dict(settings))

    return run


def run_jax(weights, memory, src_len, dtype, **settings):
    with jax.enable_x64(dtype == np.float64):
        arrays = {k: jnp.asarray(v, dtype) for k, v in weights.items()}
        result = jax_search(tuple(sorted(settings.items())))(arrays, jnp.asarray(memory, dtype), jnp.asarray(src_len))
        return jax.tree_util.tree_map(np.asarray, result)


# --- the same toy decoder in PyTorch ------------------------------------------------------------------------


def torch_decode_step(weights, state, tokens):
    h, memory, mask = state["h"], state["memory"], state["src_mask"]
    scores = torch.einsum("nsd,nd->ns", memory, h @ weights["w_query"]).masked_fill(~mask, -torch.inf)
    attention = torch.softmax(scores, dim=-1)
    context = torch.einsum("ns,nsd->nd", attention, memory)
    h = torch.tanh(weights["embed"][tokens] @ weights["w_x"] + h @ weights["w_h"] + context @ weights["w_c"])
    logits = torch.cat([h, context], dim=-1) @ weights["w_out"] + weights["b_out"]
    return logits, {"h": h, "memory": memory, "src_mask": mask, "attention": attention}


def torch_init_state(weights, memory, src_len):
    mask = torch.arange(memory.shape[1])[None, :] < src_len[:, None]
    mean = (memory * mask[:, :, None]).sum(dim=1) / src_len[:, None]
    return {"h": torch.tanh(mean @ weights["w_init"]), "memory": memory, "src_mask": mask,
            "attention": torch.zeros(mask.shape, dtype=memory.dtype)}


def run_torch(weights, memory, src_len, dtype, search=torch_beam_search, **settings):
    torch_dtype = torch.float64 if dtype == np.float64 else torch.float32
    tensors = {k: torch.tensor(v, dtype=torch_dtype) for k, v in weights.items()}
    memory, src_len = torch.tensor(memory, dtype=torch_dtype), torch.tensor(src_len)
    result = run_search(search, functools.partial(torch_decode_step, tensors),
                        torch_init_state(tensors, memory, src_len), src_len, **settings)
    return type(result)(*(None if x is None else x.numpy() for x in result))


# --- tests --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def single_torch_thread():
    """The toy's tiny matmuls are far faster on one thread (and do not fight the JAX compiler for cores)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


DATA = toy_batch()
WEIGHTS = {"base": toy_weights(eos_bias=0.5), "eos_likely": toy_weights(eos_bias=4.0),
           "eos_unlikely": toy_weights(eos_bias=-30.0), "repetitive": toy_weights(eos_bias=-3.0)}


def assert_same_nbest(jax_result, torch_result, score_tol):
    np.testing.assert_array_equal(jax_result.tokens, torch_result.tokens)
    np.testing.assert_array_equal(jax_result.lengths, torch_result.lengths)
    np.testing.assert_allclose(jax_result.scores, torch_result.scores, rtol=0, atol=score_tol)
    np.testing.assert_allclose(jax_result.attention, torch_result.attention, rtol=0, atol=max(score_tol, 1e-6))
    assert np.isfinite(jax_result.scores).all()


def ends_with_eos(result):
    last = np.take_along_axis(result.tokens, (result.lengths - 1)[..., None], axis=-1)[..., 0]
    return last == EOS_ID


def parity(weights_name, dtype=np.float64, **settings):
    settings = dict(max_len_a=MAX_LEN_A, max_len_b=MAX_LEN_B, max_len_bound=MAX_LEN_BOUND, **settings)
    weights = WEIGHTS[weights_name]
    jax_result = run_jax(weights, *DATA, dtype, **settings)
    torch_result = run_torch(weights, *DATA, dtype, **settings)
    assert_same_nbest(jax_result, torch_result, 1e-9 if dtype == np.float64 else 1e-4)
    return jax_result


@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.0])
@pytest.mark.parametrize("beam_size", [1, 4, 5])
def test_beam_parity_float64(beam_size, alpha):
    result = parity("base", beam_size=beam_size, n_best=beam_size, length_penalty=alpha)
    # Both ways of finishing occur: EOS, and the per-sentence length limit.
    eos = ends_with_eos(result)
    assert eos.any() and (~eos).any()
    at_limit = result.lengths == MAX_LENS[:, None]
    assert at_limit[~eos].all()  # a hypothesis without EOS was cut at its sentence's limit


def test_min_len_parity():
    min_len = 4
    result = parity("eos_likely", beam_size=4, n_best=4, length_penalty=0.6, min_len=min_len)
    assert (result.lengths >= np.minimum(min_len, MAX_LENS)[:, None]).all()
    assert (result.lengths == min_len).any()  # the limit binds: EOS as soon as it is allowed


def test_max_len_parity():
    result = parity("eos_unlikely", beam_size=5, n_best=5, length_penalty=1.0)
    np.testing.assert_array_equal(result.lengths, np.broadcast_to(MAX_LENS[:, None], result.lengths.shape))
    assert not ends_with_eos(result).any()


def test_no_repeat_ngram_parity():
    result = parity("repetitive", beam_size=4, n_best=4, length_penalty=0.6, no_repeat_ngram_size=2)
    for i, slot in np.ndindex(result.lengths.shape):
        tokens = result.tokens[i, slot, :result.lengths[i, slot]].tolist()
        bigrams = list(zip(tokens, tokens[1:], strict=False))
        assert len(bigrams) == len(set(bigrams))


@pytest.mark.parametrize("beam_size", [1, 4])
def test_banned_ids_parity(beam_size):
    """decode.banned_ids (a multilingual model's language tags): never output, in both searches alike."""
    free = parity("base", beam_size=beam_size, n_best=beam_size)
    counts = np.bincount(free.tokens[free.tokens > 3], minlength=VOCAB)
    banned = tuple(int(i) for i in np.argsort(-counts)[:2])
    assert counts[list(banned)].min() > 0  # the unbanned search outputs both
    result = parity("base", beam_size=beam_size, n_best=beam_size, banned_ids=banned)
    for i, slot in np.ndindex(result.lengths.shape):
        assert not set(result.tokens[i, slot, :result.lengths[i, slot]].tolist()) & set(banned)


def test_negative_length_penalty_parity():
    parity("base", beam_size=4, n_best=2, length_penalty=-0.5)


@pytest.mark.parametrize(("beam_size", "alpha"), [(1, 0.0), (4, 0.6)])
def test_beam_parity_float32(beam_size, alpha):
    parity("base", dtype=np.float32, beam_size=beam_size, n_best=beam_size, length_penalty=alpha)


def test_torch_greedy_equals_torch_and_jax_beam1():
    settings = dict(max_len_a=MAX_LEN_A, max_len_b=MAX_LEN_B, max_len_bound=MAX_LEN_BOUND)
    weights = WEIGHTS["base"]
    greedy = run_torch(weights, *DATA, np.float64, search=torch_greedy_search, **settings)
    beam = run_jax(weights, *DATA, np.float64, beam_size=1, length_penalty=0.0, **settings)
    assert_same_nbest(beam, greedy, 1e-9)
