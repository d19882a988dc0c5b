"""Beam search as one ``lax.while_loop`` over a model-agnostic ``decode_step`` (rules 1-10 of docs/search.md).

``beam_search(decode_step, init_state, src_len, settings, max_len_bound=L)`` returns the ``settings.n_best``
best finished hypotheses of every sentence as a ``BeamResult``. ``_BeamLoop`` holds what one call fixes
(shapes, limits, the length-penalty table); its methods are the loop's condition and the step, one method a
rule, so that each reads beside its rule. Jittable; only shapes and ``settings`` are static.
"""

from __future__ import annotations

import dataclasses
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
    force_prefix,
    gather_rows,
    length_penalty_table,
    max_len_per_sentence,
    prepare_state,
    top_k,
)


class _BeamCarry(NamedTuple):
    step: jax.Array                    # scalar int32 t
    model_state: Any                   # [B*K, ...]
    alive_tokens: jax.Array            # [B, K, L]
    alive_sums: jax.Array              # [B, K]
    alive_attention: jax.Array | None  # [B, K, L, S]
    finished_tokens: jax.Array         # [B, K, L]
    finished_scores: jax.Array         # [B, K], sorted best first
    finished_lengths: jax.Array        # [B, K]
    finished_attention: jax.Array | None
    done: jax.Array                    # [B] bool


class _Candidates(NamedTuple):
    """The top 2K continuations of a step (rule 5), in rank order: ``[B, 2K]`` each, ``[B, 2K, L(, S)]`` the rest."""

    sums: jax.Array
    beams: jax.Array
    tokens: jax.Array
    sequences: jax.Array
    attention: jax.Array | None


def _take_beams(values: jax.Array | None, beams: jax.Array) -> jax.Array | None:
    """values [B, K_in, ...], beams [B, K_out] -> [B, K_out, ...]."""
    if values is None:
        return None
    index = beams.reshape(beams.shape + (1,) * (values.ndim - 2))
    return jnp.take_along_axis(values, index, axis=1)


def _freeze(done: jax.Array, old: jax.Array | None, new: jax.Array | None) -> jax.Array | None:
    """Keep ``old`` for done sentences: done [B], old/new [B, ...]."""
    if old is None:
        return None
    return jnp.where(done.reshape(done.shape + (1,) * (old.ndim - 1)), old, new)


@dataclasses.dataclass(frozen=True)
class _BeamLoop:
    """What one beam search call fixes: ``B`` sentences, ``K`` beams, ``L`` buffer, ``V`` vocabulary."""

    decode_step: DecodeStep
    settings: DecodeConfig
    batch: int
    beams: int
    buffer_len: int
    vocab: int
    dtype: Any
    attention_width: int | None
    max_lens: jax.Array           # [B] rule 1
    penalty: jax.Array            # lp(0 .. L+1), rule 2
    positions: jax.Array          # [L] 0 .. L-1
    prefix: jax.Array | None      # [B*K, P] rule 10
    prefix_len: jax.Array | None  # [B*K]

    @property
    def rows(self) -> int:
        return self.batch * self.beams

    def _attention_buffer(self) -> jax.Array | None:
        if self.attention_width is None:
            return None
        return jnp.zeros((self.batch, self.beams, self.buffer_len, self.attention_width), self.dtype)

    def initial(self, state: Any) -> _BeamCarry:
        """Rule 3: only beam 0 alive (sum 0), every finished slot empty."""
        batch, beams, buffer_len = self.batch, self.beams, self.buffer_len
        return _BeamCarry(
            step=jnp.array(0, jnp.int32),
            model_state=state,
            alive_tokens=jnp.zeros((batch, beams, buffer_len), jnp.int32),
            alive_sums=jnp.tile(jnp.where(jnp.arange(beams) == 0, 0.0, -jnp.inf).astype(self.dtype), (batch, 1)),
            alive_attention=self._attention_buffer(),
            finished_tokens=jnp.zeros((batch, beams, buffer_len), jnp.int32),
            finished_scores=jnp.full((batch, beams), -jnp.inf, self.dtype),
            finished_lengths=jnp.zeros((batch, beams), jnp.int32),
            finished_attention=self._attention_buffer(),
            done=jnp.zeros((batch,), bool),
        )

    def not_done(self, carry: _BeamCarry) -> jax.Array:
        """Rule 9: run while some sentence is not done, never past the buffer."""
        return (carry.step < self.buffer_len) & ~jnp.all(carry.done)

    def _log_probs(self, carry: _BeamCarry) -> tuple[jax.Array, Any]:
        """Rule 4 and 10: the step's banned (and forced) log-probs ``[B*K, V]`` and the model's new state."""
        t = carry.step
        previous = jax.lax.dynamic_index_in_dim(carry.alive_tokens, jnp.maximum(t - 1, 0), axis=2, keepdims=False)
        logits, new_state = self.decode_step(carry.model_state, jnp.where(t == 0, BOS_ID, previous).reshape(self.rows))
        unbanned = jax.nn.log_softmax(logits.astype(self.dtype), axis=-1)
        log_probs = ban_tokens(unbanned, carry.alive_tokens.reshape(self.rows, self.buffer_len), t, self.settings)
        if self.prefix is not None:
            log_probs = force_prefix(log_probs, unbanned, self.prefix, self.prefix_len, t)
        return log_probs, new_state

    def _candidates(self, carry: _BeamCarry, log_probs: jax.Array, new_state: Any) -> _Candidates:
        """Rule 5: the top 2K of ``K*V`` summed log-probs, ties to the lower flat index ``beam * V + token``."""
        batch, beams, vocab = self.batch, self.beams, self.vocab
        t, positions = carry.step, self.positions
        flat_sums = (carry.alive_sums[:, :, None] + log_probs.reshape(batch, beams, vocab)).reshape(batch, -1)
        sums, flat = top_k(flat_sums, 2 * beams)  # [B, 2K]
        source_beams, tokens = flat // vocab, flat % vocab
        sequences = jnp.where(positions == t, tokens[:, :, None], _take_beams(carry.alive_tokens, source_beams))
        attention = None
        if self.attention_width is not None:
            step_attention = new_state["attention"].astype(self.dtype).reshape(batch, beams, self.attention_width)
            written = _take_beams(step_attention, source_beams)[:, :, None, :]
            attention = jnp.where((positions == t)[None, None, :, None], written,
                                  _take_beams(carry.alive_attention, source_beams))
        return _Candidates(sums, source_beams, tokens, sequences, attention)

    def _finish(self, carry: _BeamCarry, candidates: _Candidates, is_eos: jax.Array):
        """Rule 6: candidates ranked < K that are EOS (``is_eos [B, 2K]``) or at the length limit join the
        finished set."""
        beams, generated = self.beams, carry.step + 1
        finishable = is_eos[:, :beams] | (generated >= self.max_lens)[:, None]
        new_scores = jnp.where(finishable, candidates.sums[:, :beams] / self.penalty[generated],
                               jnp.array(-jnp.inf, self.dtype))
        scores, picked = jax.lax.top_k(jnp.concatenate([carry.finished_scores, new_scores], axis=1), beams)
        new_lengths = jnp.broadcast_to(generated, (self.batch, beams)).astype(jnp.int32)
        tokens = _take_beams(jnp.concatenate([carry.finished_tokens, candidates.sequences[:, :beams]], axis=1), picked)
        lengths = _take_beams(jnp.concatenate([carry.finished_lengths, new_lengths], axis=1), picked)
        attention = None
        if self.attention_width is not None:
            pool = jnp.concatenate([carry.finished_attention, candidates.attention[:, :beams]], axis=1)
            attention = _take_beams(pool, picked)
        return tokens, scores, lengths, attention

    def step(self, carry: _BeamCarry) -> _BeamCarry:
        """One step: rules 4-8; a done sentence's sets stay as they were."""
        log_probs, new_state = self._log_probs(carry)
        candidates = self._candidates(carry, log_probs, new_state)
        is_eos = candidates.tokens == EOS_ID
        finished_tokens, finished_scores, finished_lengths, finished_attention = self._finish(carry, candidates,
                                                                                              is_eos)

        # Rule 7: the best K non-EOS candidates stay alive; the model state follows their source beams.
        alive_sums, alive_rank = jax.lax.top_k(jnp.where(is_eos, -jnp.inf, candidates.sums), self.beams)
        source_beams = _take_beams(candidates.beams, alive_rank)  # [B, K]
        source_rows = (jnp.arange(self.batch)[:, None] * self.beams + source_beams).reshape(self.rows)

        # Rule 8: done when no alive hypothesis can beat the worst finished one, or at the length limit.
        generated = carry.step + 1
        if self.settings.length_penalty >= 0:
            best_penalty = self.penalty[self.max_lens]
        else:
            best_penalty = self.penalty[jnp.minimum(generated + 1, self.buffer_len + 1)]
        newly_done = (generated >= self.max_lens) | (alive_sums[:, 0] / best_penalty <= finished_scores[:, -1])

        was_done = carry.done
        return _BeamCarry(
            step=generated,
            model_state=gather_rows(new_state, source_rows),
            alive_tokens=_freeze(was_done, carry.alive_tokens, _take_beams(candidates.sequences, alive_rank)),
            alive_sums=_freeze(was_done, carry.alive_sums, alive_sums),
            alive_attention=_freeze(was_done, carry.alive_attention, _take_beams(candidates.attention, alive_rank)),
            finished_tokens=_freeze(was_done, carry.finished_tokens, finished_tokens),
            finished_scores=_freeze(was_done, carry.finished_scores, finished_scores),
            finished_lengths=_freeze(was_done, carry.finished_lengths, finished_lengths),
            finished_attention=_freeze(was_done, carry.finished_attention, finished_attention),
            done=was_done | newly_done,
        )


def beam_search(decode_step: DecodeStep, init_state: Any, src_len: jax.Array, settings: DecodeConfig, *,
                max_len_bound: int, prefix: jax.Array | None = None,
                prefix_len: jax.Array | None = None) -> BeamResult:
    """Beam search of ``settings.beam_size`` beams (rules 1-10 of docs/search.md). Jittable.

    init_state: pytree with leaves ``[B, ...]`` (one row per sentence); src_len ``[B]`` real source lengths;
    prefix ``[B, P]`` int32 and prefix_len ``[B]`` (optional, rule 10; ``P`` is static).
    Returns BeamResult with tokens ``[B, n_best, max_len_bound]``, lengths and scores ``[B, n_best]``,
    attention ``[B, n_best, max_len_bound, S]`` or None.
    """
    check_bound(max_len_bound)
    beams = settings.beam_size
    src_len = jnp.asarray(src_len)
    batch = src_len.shape[0]
    prefix, prefix_len = check_prefix(prefix, prefix_len, batch)
    if prefix is not None:
        prefix, prefix_len = jnp.repeat(prefix, beams, axis=0), jnp.repeat(prefix_len, beams, axis=0)
    state = jax.tree_util.tree_map(lambda leaf: jnp.repeat(leaf, beams, axis=0), init_state)
    state, vocab, dtype, attention_width = prepare_state(decode_step, state, batch * beams)
    if vocab < 2:
        raise ValueError(f"beam search needs a vocabulary of at least 2 tokens, got {vocab}")
    loop = _BeamLoop(
        decode_step=decode_step, settings=settings, batch=batch, beams=beams, buffer_len=max_len_bound, vocab=vocab,
        dtype=dtype, attention_width=attention_width,
        max_lens=max_len_per_sentence(src_len, settings.max_len_a, settings.max_len_b, max_len_bound),
        penalty=jnp.asarray(length_penalty_table(max_len_bound + 1, settings.length_penalty), dtype),
        positions=jnp.arange(max_len_bound), prefix=prefix, prefix_len=prefix_len)
    final = jax.lax.while_loop(loop.not_done, loop.step, loop.initial(state))
    n_best = settings.n_best
    attention = None if final.finished_attention is None else final.finished_attention[:, :n_best]
    return BeamResult(tokens=final.finished_tokens[:, :n_best], lengths=final.finished_lengths[:, :n_best],
                      scores=final.finished_scores[:, :n_best], attention=attention)
