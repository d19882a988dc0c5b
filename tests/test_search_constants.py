"""No reduction inside a search runs over constants only: XLA would fold it at compile time, which for a
``[128, 640]`` argmin took seconds per search shape and printed error-level ``slow_operation_alarm`` lines.

The check walks the search's jaxpr (tracing only, nothing compiles): a value is constant when it derives from
literals, iotas and closed-over arrays alone; a while loop's carry is not.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from jax.extend import core as jax_core
from run_support import tiny_config
from search_support import run_search

from seq2seq_jax.core.config import DecodeConfig
from seq2seq_jax.decoding.search import beam_search, greedy_search, sample
from seq2seq_jax.decoding.translate import Translator
from seq2seq_jax.training.steps import init_model

REDUCTIONS = {"argmin", "argmax", "reduce_max", "reduce_min", "reduce_sum", "reduce_prod", "reduce_and",
              "reduce_or", "reduce_xor", "cumsum", "cummax", "cummin", "cumprod", "cumlogsumexp", "sort", "top_k"}


def constant_reductions(closed: jax_core.ClosedJaxpr) -> list[str]:
    """The reductions of ``closed`` (nested jaxprs included) whose every operand is a constant."""
    found: list[str] = []

    def walk(jaxpr: jax_core.Jaxpr, constant_inputs: list[bool], where: str) -> None:
        constant = {var for var, flag in zip(jaxpr.invars, constant_inputs, strict=True) if flag}
        constant |= set(jaxpr.constvars)
        for eqn in jaxpr.eqns:
            inputs = [isinstance(var, jax_core.Literal) or var in constant for var in eqn.invars]
            name = eqn.primitive.name
            if name in REDUCTIONS and all(inputs):
                shapes = ", ".join(var.aval.str_short() for var in eqn.invars)
                found.append(f"{where}/{name}({shapes})")
            for key, value in eqn.params.items():
                for sub in value if isinstance(value, (tuple, list)) else [value]:
                    if isinstance(sub, jax_core.ClosedJaxpr):
                        sub = sub.jaxpr
                    if not isinstance(sub, jax_core.Jaxpr):
                        continue
                    if name == "while":  # only the loop's closed-over operands can be constant, not its carry
                        cond_consts, body_consts = eqn.params["cond_nconsts"], eqn.params["body_nconsts"]
                        consts = inputs[:cond_consts] if key == "cond_jaxpr" else \
                            inputs[cond_consts:cond_consts + body_consts]
                        flags = consts + [False] * (len(sub.invars) - len(consts))
                    elif len(sub.invars) == len(inputs):
                        flags = inputs
                    else:
                        flags = [False] * len(sub.invars)
                    walk(sub, flags, f"{where}/{name}")
            if all(inputs) and name != "while" and not name.startswith("random"):
                constant.update(eqn.outvars)

    walk(closed.jaxpr, [False] * len(closed.jaxpr.invars), "")
    return found


def test_the_check_finds_a_reduction_over_a_constant_in_a_loop():
    def search(values):
        return jax.lax.fori_loop(0, 3, lambda i, acc: acc + jnp.argmin(jnp.zeros((4, 8), bool), axis=1), values)

    found = constant_reductions(jax.make_jaxpr(search)(jnp.zeros(4, jnp.int32)))
    assert len(found) == 1 and "argmin(bool[4,8])" in found[0], found


def toy_step(state, tokens):
    """logits [N, 300] from the state and the fed tokens: enough vocabulary for ``_top_k``'s chunked path."""
    logits = state["h"] @ jnp.linspace(-1.0, 1.0, 4 * 300).reshape(4, 300) + tokens[:, None] / 7.0
    return logits, state


@pytest.mark.parametrize("search", ["beam", "greedy", "sample"])
def test_searches_reduce_no_constants(search):
    limits = dict(max_len_a=1.5, max_len_b=10.0, max_len_bound=64, min_len=2, no_repeat_ngram_size=2)
    run = {
        "beam": lambda h, src_len: run_search(beam_search, toy_step, {"h": h}, src_len, beam_size=5,
                                              length_penalty=1.0, n_best=2, **limits),
        "greedy": lambda h, src_len: run_search(greedy_search, toy_step, {"h": h}, src_len, length_penalty=1.0,
                                                **limits),
        "sample": lambda h, src_len: run_search(sample, toy_step, {"h": h}, src_len, jax.random.key(0), top_k=5,
                                                top_p=0.9, **limits),
    }[search]
    assert constant_reductions(jax.make_jaxpr(run)(jnp.zeros((128, 4)), jnp.ones((128,), jnp.int32))) == []


@pytest.mark.parametrize("beam_size, with_attention", [(5, False), (5, True), (1, False)])
def test_translator_search_reduces_no_constants(beam_size, with_attention):
    """The jitted program ``Translator`` runs, model included, at the Multi30k recipe's batch of 128."""
    model = tiny_config("model.src_vocab_size=300", "model.tgt_vocab_size=300").model
    translator = Translator(*init_model(model, 0), None, None,
                            DecodeConfig(beam_size=beam_size, batch_size=128, max_len_a=1.5, max_len_b=10))
    search = translator._search_fn(16, 40, with_attention, 0)  # no target prefix
    batch = 128
    jaxpr = jax.make_jaxpr(search)(translator.params, jnp.ones((batch, 16), jnp.int32),
                                   jnp.full((batch,), 16, jnp.int32), jax.random.key(0), None, None)
    found = constant_reductions(jaxpr)
    assert found == [], found
