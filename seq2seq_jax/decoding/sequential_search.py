"""One hypothesis per sentence: greedy search (argmax) and ancestral sampling, as ``lax.while_loop``s.

Both follow the bans, limits and prefix rule of beam search (docs/search.md) and return a ``BeamResult``
with ``n_best = 1``. Greedy search can *compact*: once no more than half its rows are unfinished they move
to a loop over half as many rows (``compaction_sizes``), because a step's cost grows with its rows and
finished rows would still be computed. Jittable; only shapes and ``settings`` are static.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from seq2seq_jax.core.config import DecodeConfig
from seq2seq_jax.core.tokens import BOS_ID, EOS_ID
from seq2seq_jax.decoding.search_rules import (
    BeamResult,
    DecodeStep,
    ban_tokens,
    check_bound,
    check_prefix,
    first_max_index,
    force_prefix,
    gather_rows,
    length_penalty_table,
    max_len_per_sentence,
    prefix_token,
    prepare_state,
)


class _SequentialCarry(NamedTuple):
    step: jax.Array               # scalar int32 t
    model_state: Any              # [B, ...]
    tokens: jax.Array             # [B, L]
    lengths: jax.Array            # [B]
    sums: jax.Array               # [B] summed log-probs of the chosen tokens
    attention: jax.Array | None   # [B, L, S]
    done: jax.Array               # [B]


class _RowLimits(NamedTuple):
    """Per-row constants that travel with the rows when they are compacted: ``[B]``, ``[B, P]``, ``[B]``."""

    max_lens: jax.Array
    prefix: jax.Array | None
    prefix_len: jax.Array | None


ChooseToken = Callable[[jax.Array, jax.Array], jax.Array]  # (banned log_probs [B, V], step) -> tokens [B]


# Compaction stops at this many rows: below it a step costs about what it costs for one row (the weights' reads).
COMPACT_MIN_ROWS = 8


def compaction_sizes(rows: int) -> tuple[int, ...]:
    """The row counts a sequential search of ``rows`` rows moves its unfinished rows to (``compact``): halves
    while at least ``COMPACT_MIN_ROWS`` (64 -> 32, 16, 8; none below 16 rows)."""
    sizes = []
    size = rows // 2
    while size >= COMPACT_MIN_ROWS:
        sizes.append(size)
        size //= 2
    return tuple(sizes)


def _rows_of(carry: _SequentialCarry, rows: jax.Array) -> _SequentialCarry:
    """The carry's rows ``rows [M]``; ``step`` is a scalar (no row axis), so it is held out of the gather."""
    return gather_rows(carry._replace(step=None), rows)._replace(step=carry.step)


def _put_rows(outer: _SequentialCarry, inner: _SequentialCarry, rows: jax.Array) -> _SequentialCarry:
    """``outer`` with its rows ``rows [M]`` replaced by those of ``inner``, the inverse of ``_rows_of``; the step
    is the inner loop's, which ran last."""
    merged = jax.tree_util.tree_map(lambda old, new: old.at[rows].set(new), outer._replace(step=None),
                                    inner._replace(step=None))
    return merged._replace(step=inner.step)


@dataclasses.dataclass(frozen=True)
class _SequentialLoop:
    """What one sequential search fixes: the model step, the settings, the token choice and the buffers."""

    decode_step: DecodeStep
    settings: DecodeConfig
    choose: ChooseToken
    buffer_len: int
    dtype: Any
    positions: jax.Array  # [L] 0 .. L-1

    def step(self, carry: _SequentialCarry, limits: _RowLimits) -> _SequentialCarry:
        """Feed each row's last token, choose the next (the prefix token inside a prefix), record it."""
        t = carry.step
        generated = t + 1
        previous = jax.lax.dynamic_index_in_dim(carry.tokens, jnp.maximum(t - 1, 0), axis=1, keepdims=False)
        logits, new_state = self.decode_step(carry.model_state, jnp.where(t == 0, BOS_ID, previous))
        unbanned = jax.nn.log_softmax(logits.astype(self.dtype), axis=-1)
        log_probs = ban_tokens(unbanned, carry.tokens, t, self.settings)
        token = self.choose(log_probs, t).astype(jnp.int32)
        if limits.prefix is not None:
            log_probs = force_prefix(log_probs, unbanned, limits.prefix, limits.prefix_len, t)
            token = jnp.where(t < limits.prefix_len, prefix_token(limits.prefix, t), token)
        token_log_prob = jnp.take_along_axis(log_probs, token[:, None], axis=1)[:, 0]
        active = ~carry.done
        write = active[:, None] & (self.positions == t)
        attention = carry.attention
        if attention is not None:
            step_attention = new_state["attention"].astype(self.dtype)[:, None, :]
            attention = jnp.where(write[:, :, None], step_attention, attention)
        return _SequentialCarry(
            step=t + 1,
            model_state=new_state,
            tokens=jnp.where(write, token[:, None], carry.tokens),
            lengths=jnp.where(active, generated, carry.lengths),
            sums=jnp.where(active, carry.sums + token_log_prob, carry.sums),
            attention=attention,
            done=carry.done | (token == EOS_ID) | (generated >= limits.max_lens),
        )

    def run(self, carry: _SequentialCarry, limits: _RowLimits, hand_over_at: int | None) -> _SequentialCarry:
        """Loop until every row is done, or (``hand_over_at``) until at most that many rows are not."""

        def not_done(carry: _SequentialCarry) -> jax.Array:
            going = (carry.step < self.buffer_len) & ~jnp.all(carry.done)
            if hand_over_at is not None:
                going &= jnp.sum(~carry.done) > hand_over_at
            return going

        return jax.lax.while_loop(not_done, lambda carry: self.step(carry, limits), carry)

    def run_compacted(self, carry: _SequentialCarry, limits: _RowLimits) -> _SequentialCarry:
        """``run`` over ever fewer rows: at each of ``compaction_sizes`` the unfinished rows (in order, finished
        ones filling the rest) move to a smaller loop; at the end every row is put back in place."""
        handed_over = []  # (the larger loop's final carry, the rows it handed over), outermost first
        for next_size in compaction_sizes(carry.done.shape[0]):
            carry = self.run(carry, limits, next_size)
            kept = jnp.argsort(carry.done, stable=True)[:next_size].astype(jnp.int32)  # unfinished rows first
            handed_over.append((carry, kept))
            carry, limits = _rows_of(carry, kept), gather_rows(limits, kept)
        carry = self.run(carry, limits, None)
        for outer, kept in reversed(handed_over):
            carry = _put_rows(outer, carry, kept)
        return carry


def _sequential_decode(decode_step: DecodeStep, init_state: Any, src_len: jax.Array, choose: ChooseToken,
                       settings: DecodeConfig, *, max_len_bound: int, prefix: jax.Array | None = None,
                       prefix_len: jax.Array | None = None, compact: bool = False) -> _SequentialCarry:
    """One hypothesis per sentence; ``choose`` picks each token.

    A sentence stops after EOS or at ``max_len_i`` tokens (same limit as beam search); its length counts
    EOS. ``sums`` add the (unrenormalised, unbanned-token) log-probs of the chosen tokens. Inside its
    ``prefix`` (rule 10) a sentence takes the prefix token, whatever ``choose`` picks.

    ``compact`` (``_SequentialLoop.run_compacted``): each row's tokens are those of the uncompacted loop (a
    row's step does not depend on the other rows); its log-probs may differ in the last float bits, as XLA's
    products round differently for different row counts. ``decode_step`` must then take any number of rows
    (every per-sentence tensor in ``state``, none closed over) and ``choose`` must not depend on a row's
    position (greedy's argmax; not sampling, whose draws do).
    """
    check_bound(max_len_bound)
    src_len = jnp.asarray(src_len)
    batch = src_len.shape[0]
    prefix, prefix_len = check_prefix(prefix, prefix_len, batch)
    state, _, dtype, attention_width = prepare_state(decode_step, init_state, batch)
    limits = _RowLimits(max_len_per_sentence(src_len, settings.max_len_a, settings.max_len_b, max_len_bound),
                        prefix, prefix_len)
    init = _SequentialCarry(
        step=jnp.array(0, jnp.int32),
        model_state=state,
        tokens=jnp.zeros((batch, max_len_bound), jnp.int32),
        lengths=jnp.zeros((batch,), jnp.int32),
        sums=jnp.zeros((batch,), dtype),
        attention=None if attention_width is None else jnp.zeros((batch, max_len_bound, attention_width), dtype),
        done=jnp.zeros((batch,), bool),
    )
    loop = _SequentialLoop(decode_step, settings, choose, max_len_bound, dtype, jnp.arange(max_len_bound))
    return loop.run_compacted(init, limits) if compact else loop.run(init, limits, None)


def greedy_search(decode_step: DecodeStep, init_state: Any, src_len: jax.Array, settings: DecodeConfig, *,
                  max_len_bound: int, prefix: jax.Array | None = None, prefix_len: jax.Array | None = None,
                  compact: bool = False) -> BeamResult:
    """The plain argmax loop (first index on ties), with the same bans, limits and prefix rule as beam search.

    ``settings.beam_size`` is not read. Scores are ``sum_logprob / lp(length)``; equals ``beam_search`` with
    one beam when ``length_penalty == 0``. ``compact``: unfinished rows move to smaller loops as rows finish.
    """
    final = _sequential_decode(decode_step, init_state, src_len, lambda log_probs, step: first_max_index(log_probs),
                               settings, max_len_bound=max_len_bound, prefix=prefix, prefix_len=prefix_len,
                               compact=compact)
    penalty = jnp.asarray(length_penalty_table(max_len_bound, settings.length_penalty), final.sums.dtype)
    return _single_best(final, final.sums / penalty[final.lengths])


def _single_best(final: _SequentialCarry, scores: jax.Array) -> BeamResult:
    attention = None if final.attention is None else final.attention[:, None]
    return BeamResult(tokens=final.tokens[:, None], lengths=final.lengths[:, None], scores=scores[:, None],
                      attention=attention)


def _sampling_logits(log_probs: jax.Array, settings: DecodeConfig) -> jax.Array:
    """Temperature, then top-k, then nucleus (top-p) filtering of ``log_probs [B, V]`` -> logits [B, V].

    top-k keeps tokens whose value is >= the k-th largest (ties at the threshold are kept); top-p keeps,
    in descending probability order, every token whose preceding cumulative probability is < top_p (the
    most likely token always survives). Removed tokens get -inf.
    """
    neg_inf = jnp.array(-jnp.inf, log_probs.dtype)
    logits = log_probs / settings.temperature
    if 0 < settings.top_k < logits.shape[-1]:
        kth_largest = jax.lax.top_k(logits, settings.top_k)[0][:, -1:]
        logits = jnp.where(logits < kth_largest, neg_inf, logits)
    if settings.top_p < 1.0:
        sorted_logits, order = jax.lax.top_k(logits, logits.shape[-1])
        sorted_probs = jax.nn.softmax(sorted_logits, axis=-1)
        mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
        keep_sorted = mass_before < settings.top_p
        keep = jnp.zeros_like(keep_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
        logits = jnp.where(keep, logits, neg_inf)
    return logits


def sample(decode_step: DecodeStep, init_state: Any, src_len: jax.Array, rng: jax.Array, settings: DecodeConfig, *,
           max_len_bound: int, prefix: jax.Array | None = None, prefix_len: jax.Array | None = None) -> BeamResult:
    """Ancestral sampling with ``settings``' temperature, top-k (0 = off) and nucleus top-p (1.0 = off). Jittable.

    Step ``t`` draws with ``jax.random.fold_in(rng, t)``, so a seed reproduces the output (for the same
    batch layout: rows of a batch share the step key). Bans, limits and the prefix rule are those of beam
    search. Scores are the summed model log-probs of the sampled tokens (temperature 1, no filtering, no
    length penalty).
    """

    def choose(log_probs: jax.Array, step: jax.Array) -> jax.Array:
        return jax.random.categorical(jax.random.fold_in(rng, step), _sampling_logits(log_probs, settings), axis=-1)

    final = _sequential_decode(decode_step, init_state, src_len, choose, settings, max_len_bound=max_len_bound,
                               prefix=prefix, prefix_len=prefix_len)
    return _single_best(final, final.sums)
