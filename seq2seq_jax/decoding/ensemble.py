"""Ensembles: several models that share their tokenizers decode and score as one. The next-token distribution
is the mean of the models' probabilities, ``p(v) = mean_i p_i(v)``; the models may differ in size and
architecture. ``torch_ref/ensemble.py`` is the PyTorch twin.

Search (``seq2seq_jax.decoding.search``) takes logits and normalises them itself, so the ensemble step returns
*logits* whose ``log_softmax`` is ``log mean_i p_i``: ``z_1 + (log mean_i p_i - log p_1)``, with ``z_1`` the
first model's logits. When every model gives the same distribution the added term is exactly 0, so a model
ensembled with itself hands search bit-identical logits and gets exactly its own n-best.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from seq2seq_jax.decoding.search import DecodeStep


def mean_log_probs(log_probs: Sequence[jax.Array]) -> jax.Array:
    """``log(mean_i exp(a_i))`` of the models' log-probabilities ``a_i [..., V]``, computed stably as
    ``m + log(mean_i exp(a_i - m))`` with ``m = max_i a_i`` (-inf where every model gives -inf).

    Element-wise over the list rather than a reduction over a stacked ``[M, ..., V]`` array, whose leading axis
    XLA:CPU does not vectorise (docs/benchmarks.md, "Ensembles")."""
    top = functools.reduce(jnp.maximum, log_probs)
    shift = jnp.where(jnp.isfinite(top), top, jnp.zeros_like(top))
    total = functools.reduce(jnp.add, [jnp.exp(a - shift) for a in log_probs])
    return shift + jnp.log(total / len(log_probs))


def ensemble_logits(logits: Sequence[jax.Array]) -> jax.Array:
    """The models' logits ``[N, V]`` each -> logits ``[N, V]`` whose ``log_softmax`` is ``mean_log_probs``
    of theirs (float32, or float64 when a model computes in float64); ``logits[0]`` itself, cast, when every
    model's distribution is the same. Where the first model gives -inf the normalised value is used."""
    dtype = jnp.result_type(jnp.float32, *(z.dtype for z in logits))
    first = logits[0].astype(dtype)
    log_probs = [jax.nn.log_softmax(z.astype(dtype), axis=-1) for z in logits]
    mean = mean_log_probs(log_probs)
    normaliser = jax.nn.logsumexp(first, axis=-1, keepdims=True)
    return jnp.where(jnp.isfinite(log_probs[0]), first + (mean - log_probs[0]), mean + normaliser)


def ensemble_search_state(search_states: Sequence[tuple[dict, DecodeStep]]) -> tuple[dict, DecodeStep]:
    """One search state and step over several models' ``Seq2Seq.search_state`` results ``(state_i, step_i)``.

    The state is ``{"models": (state_1, ..., state_M)}``, each model's per-hypothesis state (rows
    ``[N, ...]``) without "attention", plus the first model's "attention" ``[N, S]`` when its state has one:
    the attention search records (for plots) is the first model's; the others' is not computed.
    ``step(state, tokens [N]) -> (ensemble_logits [N, V], new state)``.
    """
    if not search_states:
        raise ValueError("an ensemble needs at least one model")

    def split(model_states: Sequence[dict]) -> dict:
        state = {"models": tuple({k: v for k, v in s.items() if k != "attention"} for s in model_states)}
        if "attention" in model_states[0]:
            state["attention"] = model_states[0]["attention"]
        return state

    steps = [step for _, step in search_states]

    def step(state: dict, tokens: jax.Array) -> tuple[jax.Array, dict]:
        model_states = list(state["models"])
        if "attention" in state:
            model_states[0] = {**model_states[0], "attention": state["attention"]}
        outputs = [model_step(model_state, tokens) for model_step, model_state in zip(steps, model_states,
                                                                                    strict=True)]
        return ensemble_logits([logits for logits, _ in outputs]), split([new for _, new in outputs])

    return split([state for state, _ in search_states]), step
