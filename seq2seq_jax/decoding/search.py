"""Search over a model-agnostic ``decode_step``: beam search, greedy search and sampling, all jittable.

The only thing search knows about a model is

    decode_step(state, tokens [N]) -> (logits [N, V], new_state)

where ``state`` is a dict (any pytree) whose every leaf has the hypotheses as its leading axis ``N``.
If ``new_state`` holds a key ``"attention"`` ``[N, S]`` it is recorded per generated token. Token ids:
pad 0, bos 2, eos 3. ``decode_step`` is closed over (never an argument of ``jax.jit``); only shapes and
search settings are static. ``torch_ref/search.py`` implements the same beam search as a Python loop and
must return the same n-best; the rules below are the contract both sides follow.

Notation: ``B`` sentences, ``K`` beam size, ``V`` vocabulary, ``L`` = ``max_len_bound`` (static output
buffer), ``S`` source positions of the attention, ``n`` the number of generated tokens (EOS included)
after a step (``n = t + 1`` at step ``t = 0, 1, ...``).

Beam search, pinned (the flax examples/wmt / tensor2tensor design, with fairseq's EOS rule):

1. Per-sentence length limit: ``max_len_i = min(max_len_for(src_len_i, a, b), L)`` where
   ``max_len_for(s, a, b) = max(1, ceil(a*s + b))`` (``seq2seq_jax.core.search_settings``) in Python float64 -- exactly
   ``DecodeConfig.max_len``. It depends only on the sentence's own real source length, so batch
   composition never changes results. (Inside jit the values come from a host-computed table.)
2. Scores: log-probabilities are ``log_softmax(logits)`` in float32, or float64 when the model's logits
   are float64. A hypothesis' *sum* is the sum of its tokens' log-probabilities; its *score* once
   finished is ``sum / lp(n)`` with ``lp(n) = ((5 + n) / 6) ** length_penalty`` (``n`` counts EOS;
   computed in Python float64 and cast).
3. Start: K alive hypotheses per sentence, only beam 0 alive (sum 0), beams 1..K-1 at sum -inf; the
   model state is tiled to ``[B*K]`` (each sentence's row repeated K times, beam-major inside a
   sentence); K finished slots per sentence, all empty (score -inf, length 0, tokens pad).
4. Each step feeds the last token of every alive hypothesis (BOS at step 0) and gets log-probs
   ``[B, K, V]``. Bans set a log-prob to -inf *without renormalising*:
   - ``min_len``: EOS is banned while ``n < min_len`` (so a finished length is ``>= min_len`` unless
     ``max_len_i`` is smaller, and ``min_len <= 1`` bans nothing);
   - ``no_repeat_ngram_size = N > 0``: with the generated tokens ``y_1..y_{n-1}`` (BOS not counted),
     token ``v`` is banned if ``(y_{n-N+1}, .., y_{n-1}, v)`` already occurs in ``y_1..y_{n-1}``
     (for N = 1: every token already generated). No bans before N-1 tokens exist.
   Nothing else is banned (pad and bos can be generated; a trained model gives them ~0 probability).
5. Candidates: ``alive_sum[:, :, None] + log_probs`` flattened to ``[B, K*V]`` (flat index
   ``beam * V + token``); the top 2K are taken by value, **ties broken by lower flat index first**
   (``lax.top_k`` / a stable descending sort; ``_top_k`` computes exactly that without sorting). Every later
   ranking is likewise stable: equal keys keep their current order.
6. Finishing: a candidate of rank ``r < K`` (0-based, in the top-2K order) is *finishable* if its token
   is EOS or ``n == max_len_i`` (then it is finished as-is, without EOS, at length ``n = max_len_i``).
   Finishable candidates get score ``sum / lp(n)``, the others -inf. The new finished set is the top K
   of ``[old finished slots (slot order)] + [the K candidates of rank < K (rank order)]`` by score.
   (Only EOS ranked within the top K counts -- fairseq's rule -- so that K = 1 with
   ``length_penalty = 0`` is exactly the argmax loop. Since the old slots come first, a -inf candidate
   never displaces an old slot: empty slots stay empty.) Tokens after the length are pad.
7. Alive: the top K of the 2K candidates by ``sum`` with EOS candidates keyed -inf (i.e. the best K
   non-EOS candidates, in rank order); the model state rows are gathered from their source beams.
8. A sentence is *done* after the step when ``n >= max_len_i``, or when no alive hypothesis can beat
   the worst finished one: ``bound <= worst``, where ``worst`` is the K-th finished score (-inf while a
   slot is empty) and ``bound = best_alive_sum / lp(max_len_i)`` if ``length_penalty >= 0`` else
   ``best_alive_sum / lp(n + 1)`` (the best score any continuation could reach, because log-probs are
   ``<= 0``). A sentence whose alive sums are all -inf is done. A done sentence's alive and finished
   sets never change again (its rows are still computed, then discarded).
9. The loop (one ``lax.while_loop``) runs while some sentence is not done; ``n`` never exceeds ``L``.
   The result is the first ``n_best`` finished slots, sorted by score (best first). A slot that never
   filled (only possible when fewer than K hypotheses exist) has score -inf, length 0 and pad tokens.

10. Target prefix (optional): ``prefix [B, P]`` int32 and ``prefix_len [B]`` (0 = none, at most ``P``). While
   ``n <= prefix_len_i`` every log-prob of sentence ``i``'s hypotheses except that of the prefix token
   ``prefix[i, n - 1]`` is set to -inf (not renormalised); the prefix token keeps its model log-prob, which
   counts in the sum, even when a rule-4 ban would remove it (the prefix wins over ``min_len`` and
   no-repeat bans; those still apply to the steps after it, and the prefix tokens count as generated
   history for the no-repeat rule). No EOS is forced after the prefix: the search continues by rules 4-9
   (a prefix holds real tokens; ``Translator`` makes it with the target tokenizer, which never emits EOS).
   With K beams only beam 0 is alive at the start, so forced steps keep exactly one alive hypothesis. A
   prefix longer than ``max_len_i`` is the caller's error (``Translator`` checks it on the host); a
   hypothesis reaching ``max_len_i`` inside its prefix finishes there, as rule 6 says. Greedy search and
   sampling force the same tokens.

Greedy search is ``beam_search(..., beam_size=1)``; with ``length_penalty = 0`` it equals the plain
argmax loop ``greedy_search`` (for ``length_penalty != 0`` a K = 1 beam may keep searching past an
argmax EOS for a better-normalised hypothesis, as beam search should). ``greedy_search(..., compact=True)``
runs the same loop but moves the unfinished rows to a loop over half as many rows once no more than half are
unfinished, and so on (``_sequential_decode``): each row's tokens are the same, its log-probs equal up to
float rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from seq2seq_jax.core.search_settings import max_len_for
from seq2seq_jax.core.tokens import BOS_ID, EOS_ID

DecodeStep = Callable[[Any, jax.Array], tuple[jax.Array, Any]]

# src lengths beyond this many tokens share the table entry of this length (a length limit that is still
# below max_len_bound here needs max_len_a < max_len_bound / 65536: not a real setting).
_MAX_TABLE_SRC_LEN = 1 << 16


class BeamResult(NamedTuple):
    """n-best output of a search (``n_best = 1`` for greedy search).

    tokens    [B, n_best, L] int32, pad (0) after the last token
    lengths   [B, n_best] int32, generated tokens including EOS
    scores    [B, n_best] float, ``sum_logprob / lp(length)``, best first
    attention [B, n_best, L, S] float, zeros after the length; None if the state has no "attention"
    """

    tokens: jax.Array
    lengths: jax.Array
    scores: jax.Array
    attention: jax.Array | None


# ---------------------------------------------------------------------------------------------------------
# Length limits and the length penalty (host side, Python float64)
# ---------------------------------------------------------------------------------------------------------


def max_len_bound_for(src_lengths: Sequence[int] | np.ndarray, max_len_a: float, max_len_b: float) -> int:
    """The static ``max_len_bound`` that lets every sentence of a batch reach its own limit.

    Round it up (e.g. to a multiple of 8) to share compiled searches between batches; results do not
    depend on the bound as long as it is at least this value.
    """
    lengths = [int(s) for s in np.asarray(src_lengths).reshape(-1)]
    if not lengths:
        raise ValueError("max_len_bound_for needs at least one source length")
    return max(max_len_for(s, max_len_a, max_len_b) for s in lengths)


def length_penalty_table(max_len_bound: int, alpha: float) -> np.ndarray:
    """``lp(n) = ((5 + n) / 6) ** alpha`` for ``n = 0 .. max_len_bound`` as float64 ``[max_len_bound + 1]``."""
    return np.array([((5.0 + n) / 6.0) ** alpha for n in range(max_len_bound + 1)], dtype=np.float64)


def _max_len_per_sentence(src_len: jax.Array, max_len_a: float, max_len_b: float, max_len_bound: int) -> jax.Array:
    """``min(max_len_for(src_len_i), max_len_bound)`` for traced ``src_len [B]`` -> int32 ``[B]``.

    The float64 host formula is tabulated for every source length up to the one where the limit reaches
    the bound (it is non-decreasing in the source length), so jit and Python agree exactly.
    """
    if max_len_a > 0:
        saturating = max(0, math.ceil((max_len_bound - max_len_b) / max_len_a)) + 1
        table_size = min(saturating, _MAX_TABLE_SRC_LEN) + 1
    else:
        table_size = 1
    table = np.array([min(max_len_for(s, max_len_a, max_len_b), max_len_bound) for s in range(table_size)],
                     dtype=np.int32)
    index = jnp.clip(src_len.astype(jnp.int32), 0, table_size - 1)
    return jnp.asarray(table)[index]


def _check_settings(max_len_bound: int, min_len: int, no_repeat_ngram_size: int) -> None:
    if not isinstance(max_len_bound, (int, np.integer)) or max_len_bound < 1:
        raise ValueError(f"max_len_bound must be a positive Python int (static), got {max_len_bound!r}")
    if min_len < 0:
        raise ValueError(f"min_len must be >= 0, got {min_len}")
    if no_repeat_ngram_size < 0:
        raise ValueError(f"no_repeat_ngram_size must be >= 0, got {no_repeat_ngram_size}")


# ---------------------------------------------------------------------------------------------------------
# Pieces shared by beam search and the sequential (greedy / sampling) loop
# ---------------------------------------------------------------------------------------------------------


def _score_dtype(logits_dtype) -> jnp.dtype:
    """float32, or float64 when the model computes in float64."""
    return jnp.promote_types(logits_dtype, jnp.float32)


def _prepare_state(decode_step: DecodeStep, state: Any, num_rows: int):
    """Probe one step (shapes only, nothing runs) and check that the state keeps its structure.

    state: leaves ``[num_rows, ...]``. Returns ``(state, vocab size, score dtype, attention width or None)``;
    a zero "attention" leaf is added when decode_step produces one that the initial state lacks (the
    while_loop carry must keep one structure).
    """
    tokens = jax.ShapeDtypeStruct((num_rows,), jnp.int32)
    logits, new_state = jax.eval_shape(decode_step, state, tokens)
    if logits.ndim != 2 or logits.shape[0] != num_rows:
        raise ValueError(f"decode_step must return logits [{num_rows}, V], got shape {logits.shape}")
    attention = new_state.get("attention") if isinstance(new_state, dict) else None
    if attention is not None:
        if attention.ndim != 2 or attention.shape[0] != num_rows:
            raise ValueError(f"state['attention'] must be [{num_rows}, S], got shape {attention.shape}")
        if "attention" not in state:
            state = {**state, "attention": jnp.zeros(attention.shape, attention.dtype)}
    before, after = jax.tree_util.tree_structure(state), jax.tree_util.tree_structure(new_state)
    if before != after:
        raise ValueError(f"decode_step must return a state with the structure of its input: {before} -> {after}")
    for (path, old), new in zip(jax.tree_util.tree_leaves_with_path(state), jax.tree_util.tree_leaves(new_state),
                                strict=True):
        name, old_shape, old_dtype = jax.tree_util.keystr(path), jnp.shape(old), jnp.result_type(old)
        if old_shape != new.shape or old_dtype != new.dtype:
            raise ValueError(f"decode_step changed state{name} from {old_dtype}{list(old_shape)} to "
                             f"{new.dtype}{list(new.shape)}; every leaf must keep its shape and dtype")
        if not old_shape or old_shape[0] != num_rows:
            raise ValueError(f"state{name} has shape {list(old_shape)}; every leaf needs the hypotheses "
                             f"({num_rows}) as its leading axis")
    width = None if attention is None else attention.shape[1]
    return state, logits.shape[1], _score_dtype(logits.dtype), width


def _ban_tokens(log_probs: jax.Array, history: jax.Array, step: jax.Array, *, min_len: int,
                no_repeat_ngram_size: int, eos_id: int) -> jax.Array:
    """Apply the min_len and no-repeat-n-gram bans (rule 4 of the module docstring).

    log_probs [N, V]; history [N, L] generated tokens, valid at positions < step; step: traced scalar t.
    Returns log_probs with banned entries at -inf.
    """
    num_rows, vocab = log_probs.shape
    neg_inf = jnp.array(-jnp.inf, log_probs.dtype)
    generated = step + 1  # n: length after this step, EOS included
    if min_len > 1:
        eos_banned = generated < min_len
        log_probs = log_probs.at[:, eos_id].set(jnp.where(eos_banned, neg_inf, log_probs[:, eos_id]))
    ngram = no_repeat_ngram_size
    buffer_len = history.shape[1]
    if ngram > 0 and buffer_len >= ngram:
        num_starts = buffer_len - ngram + 1
        # The n-1 most recent tokens, positions t-n+1 .. t-1 (clipped at 0 while fewer exist; then no
        # n-gram start is valid anyway).
        prefix = jax.lax.dynamic_slice_in_dim(history, jnp.maximum(step - ngram + 1, 0), ngram - 1, axis=1)
        match = jnp.ones((num_rows, num_starts), bool)
        for offset in range(ngram - 1):
            match &= history[:, offset:offset + num_starts] == prefix[:, offset:offset + 1]
        # An n-gram starting at j is complete in the history iff j + n - 1 <= t - 1.
        match &= jnp.arange(num_starts)[None, :] <= step - ngram
        banned_token = history[:, ngram - 1:]  # [N, num_starts]: the token that completed each n-gram
        rows = jnp.broadcast_to(jnp.arange(num_rows)[:, None], banned_token.shape)
        banned = jnp.zeros((num_rows, vocab), jnp.int32).at[rows, banned_token].max(match.astype(jnp.int32))
        log_probs = jnp.where(banned > 0, neg_inf, log_probs)
    return log_probs


def _check_prefix(prefix: jax.Array | None, prefix_len: jax.Array | None, rows: int):
    """``(prefix [rows, P] int32, prefix_len [rows] int32)``, or ``(None, None)`` without a prefix (or with P = 0)."""
    if (prefix is None) != (prefix_len is None):
        raise ValueError("prefix and prefix_len go together: give both or neither")
    if prefix is None or prefix.shape[1] == 0:
        return None, None
    if prefix.ndim != 2 or prefix.shape[0] != rows or jnp.shape(prefix_len) != (rows,):
        raise ValueError(f"need prefix [{rows}, P] and prefix_len [{rows}], got {prefix.shape} and "
                         f"{jnp.shape(prefix_len)}")
    return jnp.asarray(prefix, jnp.int32), jnp.asarray(prefix_len, jnp.int32)


def _prefix_token(prefix: jax.Array, step: jax.Array) -> jax.Array:
    """``prefix [N, P]`` -> the token each row is forced to at step t, ``prefix[:, t]`` (clipped) ``[N]``."""
    return jax.lax.dynamic_index_in_dim(prefix, jnp.minimum(step, prefix.shape[1] - 1), axis=1, keepdims=False)


def _force_prefix(log_probs: jax.Array, unbanned: jax.Array, prefix: jax.Array, prefix_len: jax.Array,
                  step: jax.Array) -> jax.Array:
    """Rule 10: rows still inside their prefix keep only the prefix token, at its unbanned log-prob.

    log_probs [N, V] after the bans; unbanned [N, V] before them; prefix [N, P]; prefix_len [N]; step t.
    """
    forced = step < prefix_len  # n = t + 1 <= prefix_len
    is_token = jnp.arange(log_probs.shape[1])[None, :] == _prefix_token(prefix, step)[:, None]
    only_token = jnp.where(is_token, unbanned, jnp.array(-jnp.inf, log_probs.dtype))
    return jnp.where(forced[:, None], only_token, log_probs)


# ``_top_k`` splits a row into chunks of this many entries.
TOP_K_CHUNK = 64


def _top_k(values: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """``lax.top_k(values, k)`` -- the ``k`` largest per row, ties to the lower index -- without sorting the row.

    values ``[N, W]`` -> ``(top values [N, k], indices [N, k] int32)``, equal to ``lax.top_k``'s. Inside a
    loop XLA:CPU lowers ``lax.top_k`` to a stable sort of the whole row (``W = K·V``), a large part of a
    beam-search step (docs/benchmarks.md). Here the row is cut into chunks of ``TOP_K_CHUNK`` entries (the
    last padded with -inf); one pass takes every chunk's maximum; only the ``k`` chunks with the largest
    maxima (ties: lower chunk) are searched, in index order. That is exact: an entry of the top ``k`` lies
    in one of those chunks, since every chunk ranked above its own holds an entry (its maximum) that ranks
    above it -- larger, or equal and at a lower index.
    """
    rows, width = values.shape
    chunk = min(TOP_K_CHUNK, width)
    num_chunks = -(-width // chunk)
    if num_chunks <= k:
        values_k, indices = jax.lax.top_k(values, k)
        return values_k, indices.astype(jnp.int32)
    padded = jnp.pad(values, ((0, 0), (0, num_chunks * chunk - width)), constant_values=-jnp.inf)
    chunks = padded.reshape(rows, num_chunks, chunk)
    _, best_chunks = jax.lax.top_k(jnp.max(chunks, axis=-1), k)  # [N, k]
    best_chunks = jnp.sort(best_chunks, axis=-1)  # index order, so that ties stay lower-index first
    candidates = jnp.take_along_axis(chunks, best_chunks[:, :, None], axis=1).reshape(rows, k * chunk)
    values_k, position = _top_k_by_argmax(candidates, k)
    indices = jnp.take_along_axis(best_chunks, position // chunk, axis=1) * chunk + position % chunk
    return values_k, indices.astype(jnp.int32)


def first_max_index(values: jax.Array) -> jax.Array:
    """``jnp.argmax(values, axis=-1)`` as int32, by plain reductions: ``values [..., W]`` -> ``[...]``.

    The first index of the row's maximum (index 0 for a row of -inf); in a row holding NaN, the first NaN,
    as argmax (which ranks NaN above everything). XLA:CPU lowers argmax to one reduction over (value, index)
    pairs that it does not vectorize, a large part of a many-row greedy step (docs/benchmarks.md, Serving); a
    maximum, then the least index holding it, are two plain reductions it vectorizes.
    """
    nan = jnp.isnan(values)
    holds_max = jnp.where(jnp.any(nan, axis=-1, keepdims=True), nan,
                          values == jnp.max(values, axis=-1, keepdims=True))
    positions = jax.lax.broadcasted_iota(jnp.int32, values.shape, values.ndim - 1)
    return jnp.min(jnp.where(holds_max, positions, values.shape[-1]), axis=-1)


def _top_k_by_argmax(values: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """``lax.top_k`` of a short row by ``k`` passes of ``argmax`` (first maximum), each masking its pick.

    Inside the search loop XLA:CPU sorts for ``lax.top_k`` (outside loops it may call its TopK kernel);
    ``k`` passes over ``k * TOP_K_CHUNK`` entries cost less. Once only -inf remains, the pick is the lowest
    index not taken yet, where a stable sort would put it.
    """
    neg_inf = jnp.array(-jnp.inf, values.dtype)
    positions = jnp.arange(values.shape[1])
    taken = None  # [N, W] bool once a pass has picked; None before, so no reduction runs over a constant
    picked_values, picked = [], []
    for _ in range(k):
        if taken is None:
            index = first_max_index(values)  # the first maximum: index 0 when all are -inf
        else:
            masked = jnp.where(taken, neg_inf, values)
            index = first_max_index(masked)
            index = jnp.where(jnp.max(masked, axis=1) == neg_inf, first_max_index(~taken), index)
        hit = positions[None, :] == index[:, None]
        picked_values.append(jnp.max(jnp.where(hit, values, neg_inf), axis=1))
        picked.append(index)
        taken = hit if taken is None else taken | hit
    return jnp.stack(picked_values, axis=1), jnp.stack(picked, axis=1).astype(jnp.int32)


def _gather_rows(tree: Any, rows: jax.Array) -> Any:
    """Every leaf of a ``[N, ...]`` pytree at ``rows [M]`` along axis 0 (a reordering when ``M = N``)."""
    return jax.tree_util.tree_map(lambda leaf: jnp.take(leaf, rows, axis=0), tree)


# ---------------------------------------------------------------------------------------------------------
# Beam search
# ---------------------------------------------------------------------------------------------------------


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


def beam_search(decode_step: DecodeStep, init_state: Any, src_len: jax.Array, *, beam_size: int,
                length_penalty: float, n_best: int = 1, min_len: int = 0, max_len_a: float, max_len_b: float,
                max_len_bound: int, no_repeat_ngram_size: int = 0, eos_id: int = EOS_ID,
                bos_id: int = BOS_ID, prefix: jax.Array | None = None,
                prefix_len: jax.Array | None = None) -> BeamResult:
    """Beam search as one ``lax.while_loop`` (rules in the module docstring). Jittable.

    init_state: pytree with leaves ``[B, ...]`` (one row per sentence); src_len ``[B]`` real source lengths;
    prefix ``[B, P]`` int32 and prefix_len ``[B]`` (optional, rule 10; ``P`` is static).
    Returns BeamResult with tokens ``[B, n_best, max_len_bound]``, lengths and scores ``[B, n_best]``,
    attention ``[B, n_best, max_len_bound, S]`` or None.
    """
    _check_settings(max_len_bound, min_len, no_repeat_ngram_size)
    if beam_size < 1 or not 1 <= n_best <= beam_size:
        raise ValueError(f"need beam_size >= 1 and 1 <= n_best <= beam_size, got {beam_size}, {n_best}")
    beams, buffer_len = beam_size, max_len_bound
    src_len = jnp.asarray(src_len)
    batch = src_len.shape[0]
    rows = batch * beams

    prefix, prefix_len = _check_prefix(prefix, prefix_len, batch)
    if prefix is not None:
        prefix, prefix_len = jnp.repeat(prefix, beams, axis=0), jnp.repeat(prefix_len, beams, axis=0)
    state = jax.tree_util.tree_map(lambda leaf: jnp.repeat(leaf, beams, axis=0), init_state)
    state, vocab, dtype, attention_width = _prepare_state(decode_step, state, rows)
    if vocab < 2:
        raise ValueError(f"beam search needs a vocabulary of at least 2 tokens, got {vocab}")

    max_lens = _max_len_per_sentence(src_len, max_len_a, max_len_b, buffer_len)  # [B]
    penalty = jnp.asarray(length_penalty_table(buffer_len + 1, length_penalty), dtype)  # lp(0 .. L+1)
    neg_inf = jnp.array(-jnp.inf, dtype)
    positions = jnp.arange(buffer_len)

    def attention_buffer():
        if attention_width is None:
            return None
        return jnp.zeros((batch, beams, buffer_len, attention_width), dtype)

    init = _BeamCarry(
        step=jnp.array(0, jnp.int32),
        model_state=state,
        alive_tokens=jnp.zeros((batch, beams, buffer_len), jnp.int32),
        alive_sums=jnp.tile(jnp.where(jnp.arange(beams) == 0, 0.0, -jnp.inf).astype(dtype), (batch, 1)),
        alive_attention=attention_buffer(),
        finished_tokens=jnp.zeros((batch, beams, buffer_len), jnp.int32),
        finished_scores=jnp.full((batch, beams), -jnp.inf, dtype),
        finished_lengths=jnp.zeros((batch, beams), jnp.int32),
        finished_attention=attention_buffer(),
        done=jnp.zeros((batch,), bool),
    )

    def not_done(carry: _BeamCarry) -> jax.Array:
        return (carry.step < buffer_len) & ~jnp.all(carry.done)

    def step_fn(carry: _BeamCarry) -> _BeamCarry:
        t = carry.step
        generated = t + 1
        previous = jax.lax.dynamic_index_in_dim(carry.alive_tokens, jnp.maximum(t - 1, 0), axis=2, keepdims=False)
        last_tokens = jnp.where(t == 0, bos_id, previous).reshape(rows)
        logits, new_state = decode_step(carry.model_state, last_tokens)
        unbanned = jax.nn.log_softmax(logits.astype(dtype), axis=-1)
        log_probs = _ban_tokens(unbanned, carry.alive_tokens.reshape(rows, buffer_len), t, min_len=min_len,
                                no_repeat_ngram_size=no_repeat_ngram_size, eos_id=eos_id)
        if prefix is not None:
            log_probs = _force_prefix(log_probs, unbanned, prefix, prefix_len, t)

        # Rule 5: top 2K of K*V.
        candidates = (carry.alive_sums[:, :, None] + log_probs.reshape(batch, beams, vocab)).reshape(batch, -1)
        cand_sums, cand_flat = _top_k(candidates, 2 * beams)  # [B, 2K]
        cand_beams, cand_tokens = cand_flat // vocab, cand_flat % vocab
        cand_seqs = _take_beams(carry.alive_tokens, cand_beams)  # [B, 2K, L]
        cand_seqs = jnp.where(positions == t, cand_tokens[:, :, None], cand_seqs)
        cand_attention = None
        if attention_width is not None:
            step_attention = new_state["attention"].astype(dtype).reshape(batch, beams, attention_width)
            cand_attention = _take_beams(carry.alive_attention, cand_beams)  # [B, 2K, L, S]
            written = _take_beams(step_attention, cand_beams)[:, :, None, :]
            cand_attention = jnp.where((positions == t)[None, None, :, None], written, cand_attention)

        # Rule 6: finishing (ranks < K that are EOS or at the length limit).
        is_eos = cand_tokens == eos_id
        at_limit = (generated >= max_lens)[:, None]
        finishable = (is_eos[:, :beams] | at_limit)
        new_scores = jnp.where(finishable, cand_sums[:, :beams] / penalty[generated], neg_inf)
        pool_scores = jnp.concatenate([carry.finished_scores, new_scores], axis=1)  # [B, 2K]
        finished_scores, picked = jax.lax.top_k(pool_scores, beams)
        pool_tokens = jnp.concatenate([carry.finished_tokens, cand_seqs[:, :beams]], axis=1)
        pool_lengths = jnp.concatenate(
            [carry.finished_lengths, jnp.broadcast_to(generated, (batch, beams)).astype(jnp.int32)], axis=1)
        finished_tokens = _take_beams(pool_tokens, picked)
        finished_lengths = _take_beams(pool_lengths, picked)
        finished_attention = None
        if attention_width is not None:
            pool_attention = jnp.concatenate([carry.finished_attention, cand_attention[:, :beams]], axis=1)
            finished_attention = _take_beams(pool_attention, picked)

        # Rule 7: the best K non-EOS candidates stay alive.
        alive_sums, alive_rank = jax.lax.top_k(jnp.where(is_eos, neg_inf, cand_sums), beams)  # [B, K]
        alive_tokens = _take_beams(cand_seqs, alive_rank)
        alive_attention = _take_beams(cand_attention, alive_rank)
        source_beams = _take_beams(cand_beams, alive_rank)  # [B, K]
        source_rows = (jnp.arange(batch)[:, None] * beams + source_beams).reshape(rows)
        new_state = _gather_rows(new_state, source_rows)

        # Rule 8: is the sentence done?
        if length_penalty >= 0:
            best_penalty = penalty[max_lens]
        else:
            best_penalty = penalty[jnp.minimum(generated + 1, buffer_len + 1)]
        bound = alive_sums[:, 0] / best_penalty
        newly_done = (generated >= max_lens) | (bound <= finished_scores[:, -1])

        was_done = carry.done
        return _BeamCarry(
            step=t + 1,
            model_state=new_state,
            alive_tokens=_freeze(was_done, carry.alive_tokens, alive_tokens),
            alive_sums=_freeze(was_done, carry.alive_sums, alive_sums),
            alive_attention=_freeze(was_done, carry.alive_attention, alive_attention),
            finished_tokens=_freeze(was_done, carry.finished_tokens, finished_tokens),
            finished_scores=_freeze(was_done, carry.finished_scores, finished_scores),
            finished_lengths=_freeze(was_done, carry.finished_lengths, finished_lengths),
            finished_attention=_freeze(was_done, carry.finished_attention, finished_attention),
            done=was_done | newly_done,
        )

    final = jax.lax.while_loop(not_done, step_fn, init)
    attention = None if final.finished_attention is None else final.finished_attention[:, :n_best]
    return BeamResult(tokens=final.finished_tokens[:, :n_best], lengths=final.finished_lengths[:, :n_best],
                      scores=final.finished_scores[:, :n_best], attention=attention)


# ---------------------------------------------------------------------------------------------------------
# Sequential decoding: greedy (argmax) and sampling
# ---------------------------------------------------------------------------------------------------------


class _SequentialCarry(NamedTuple):
    step: jax.Array               # scalar int32 t
    model_state: Any              # [B, ...]
    tokens: jax.Array             # [B, L]
    lengths: jax.Array            # [B]
    sums: jax.Array               # [B] summed log-probs of the chosen tokens
    attention: jax.Array | None   # [B, L, S]
    done: jax.Array               # [B]


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


def _put_rows(outer: Any, inner: Any, rows: jax.Array) -> Any:
    """``outer`` (a ``[N, ...]`` pytree) with its rows ``rows [M]`` replaced by those of ``inner`` (``[M, ...]``);
    the inverse of ``_gather_rows`` for the rows it took."""
    return jax.tree_util.tree_map(lambda old, new: old.at[rows].set(new), outer, inner)


def _sequential_decode(decode_step: DecodeStep, init_state: Any, src_len: jax.Array, choose: ChooseToken, *,
                       min_len: int, max_len_a: float, max_len_b: float, max_len_bound: int,
                       no_repeat_ngram_size: int, eos_id: int, bos_id: int, prefix: jax.Array | None = None,
                       prefix_len: jax.Array | None = None, compact: bool = False) -> _SequentialCarry:
    """One hypothesis per sentence, ``lax.while_loop``s; ``choose`` picks each token.

    A sentence stops after EOS or at ``max_len_i`` tokens (same limit as beam search); its length counts
    EOS. ``sums`` add the (unrenormalised, unbanned-token) log-probs of the chosen tokens. Inside its
    ``prefix`` (rule 10) a sentence takes the prefix token, whatever ``choose`` picks.

    ``compact``: once no more than half the rows are unfinished, they move (in order, with finished rows
    filling the rest) to a loop over half as many rows, and so on down to ``COMPACT_MIN_ROWS``
    (``compaction_sizes``); the rows' results are put back in place at the end. A step's cost grows with its
    rows, and finished rows would still be computed. Each row's tokens are those of the uncompacted loop (a
    row's step does not depend on the other rows); its log-probs may differ in the last float bits, as
    XLA's products round differently for different row counts. ``decode_step`` must then take any number of
    rows: every per-sentence tensor it uses in ``state``, none closed over. ``choose`` must not depend on a
    row's position (greedy's argmax; not sampling, whose draws do).
    """
    _check_settings(max_len_bound, min_len, no_repeat_ngram_size)
    buffer_len = max_len_bound
    src_len = jnp.asarray(src_len)
    batch = src_len.shape[0]
    prefix, prefix_len = _check_prefix(prefix, prefix_len, batch)
    state, _, dtype, attention_width = _prepare_state(decode_step, init_state, batch)
    max_lens = _max_len_per_sentence(src_len, max_len_a, max_len_b, buffer_len)
    positions = jnp.arange(buffer_len)

    init = _SequentialCarry(
        step=jnp.array(0, jnp.int32),
        model_state=state,
        tokens=jnp.zeros((batch, buffer_len), jnp.int32),
        lengths=jnp.zeros((batch,), jnp.int32),
        sums=jnp.zeros((batch,), dtype),
        attention=None if attention_width is None else jnp.zeros((batch, buffer_len, attention_width), dtype),
        done=jnp.zeros((batch,), bool),
    )

    def run(carry: _SequentialCarry, rows: tuple, hand_over_at: int | None) -> _SequentialCarry:
        """The loop over the rows of ``carry`` (``rows``: their ``(max_lens, prefix, prefix_len)``), until every
        row is done, or until at most ``hand_over_at`` rows are not."""
        row_max_lens, row_prefix, row_prefix_len = rows

        def not_done(carry: _SequentialCarry) -> jax.Array:
            going = (carry.step < buffer_len) & ~jnp.all(carry.done)
            if hand_over_at is not None:
                going &= jnp.sum(~carry.done) > hand_over_at
            return going

        def step_fn(carry: _SequentialCarry) -> _SequentialCarry:
            t = carry.step
            generated = t + 1
            previous = jax.lax.dynamic_index_in_dim(carry.tokens, jnp.maximum(t - 1, 0), axis=1, keepdims=False)
            logits, new_state = decode_step(carry.model_state, jnp.where(t == 0, bos_id, previous))
            unbanned = jax.nn.log_softmax(logits.astype(dtype), axis=-1)
            log_probs = _ban_tokens(unbanned, carry.tokens, t, min_len=min_len,
                                    no_repeat_ngram_size=no_repeat_ngram_size, eos_id=eos_id)
            token = choose(log_probs, t).astype(jnp.int32)
            if row_prefix is not None:
                log_probs = _force_prefix(log_probs, unbanned, row_prefix, row_prefix_len, t)
                token = jnp.where(t < row_prefix_len, _prefix_token(row_prefix, t), token)
            token_log_prob = jnp.take_along_axis(log_probs, token[:, None], axis=1)[:, 0]
            active = ~carry.done
            write = active[:, None] & (positions == t)
            attention = carry.attention
            if attention is not None:
                step_attention = new_state["attention"].astype(dtype)[:, None, :]
                attention = jnp.where(write[:, :, None], step_attention, attention)
            return _SequentialCarry(
                step=t + 1,
                model_state=new_state,
                tokens=jnp.where(write, token[:, None], carry.tokens),
                lengths=jnp.where(active, generated, carry.lengths),
                sums=jnp.where(active, carry.sums + token_log_prob, carry.sums),
                attention=attention,
                done=carry.done | (token == eos_id) | (generated >= row_max_lens),
            )

        return jax.lax.while_loop(not_done, step_fn, carry)

    sizes = compaction_sizes(batch) if compact else ()
    carry, rows = init, (max_lens, prefix, prefix_len)
    handed_over = []  # (the larger loop's final carry, the rows it handed over), outermost first
    for next_size in (*sizes, None):
        carry = run(carry, rows, next_size)
        if next_size is None:
            break
        kept = jnp.argsort(carry.done, stable=True)[:next_size].astype(jnp.int32)  # unfinished rows first, in order
        handed_over.append((carry, kept))
        carry = _gather_rows(carry._replace(step=None), kept)._replace(step=carry.step)
        rows = _gather_rows(rows, kept)
    for outer, kept in reversed(handed_over):
        carry = _put_rows(outer._replace(step=None), carry._replace(step=None), kept)._replace(step=carry.step)
    return carry


def greedy_search(decode_step: DecodeStep, init_state: Any, src_len: jax.Array, *, length_penalty: float = 0.0,
                  min_len: int = 0, max_len_a: float, max_len_b: float, max_len_bound: int,
                  no_repeat_ngram_size: int = 0, eos_id: int = EOS_ID, bos_id: int = BOS_ID,
                  prefix: jax.Array | None = None, prefix_len: jax.Array | None = None,
                  compact: bool = False) -> BeamResult:
    """The plain argmax loop (first index on ties), with the same bans, limits and prefix rule as beam search.

    Returns a BeamResult with ``n_best = 1``; scores are ``sum_logprob / lp(length)``. Equals
    ``beam_search(..., beam_size=1)`` when ``length_penalty == 0``. ``compact``: unfinished rows move to
    smaller loops as rows finish (``_sequential_decode``; ``decode_step`` must then take any row count).
    """
    final = _sequential_decode(decode_step, init_state, src_len, lambda log_probs, step: first_max_index(log_probs),
                               min_len=min_len, max_len_a=max_len_a, max_len_b=max_len_b,
                               max_len_bound=max_len_bound, no_repeat_ngram_size=no_repeat_ngram_size,
                               eos_id=eos_id, bos_id=bos_id, prefix=prefix, prefix_len=prefix_len, compact=compact)
    penalty = jnp.asarray(length_penalty_table(max_len_bound, length_penalty), final.sums.dtype)
    scores = final.sums / penalty[final.lengths]
    attention = None if final.attention is None else final.attention[:, None]
    return BeamResult(tokens=final.tokens[:, None], lengths=final.lengths[:, None], scores=scores[:, None],
                      attention=attention)


def _sampling_logits(log_probs: jax.Array, *, temperature: float, top_k: int, top_p: float) -> jax.Array:
    """Temperature, then top-k, then nucleus (top-p) filtering of ``log_probs [B, V]`` -> logits [B, V].

    top-k keeps tokens whose value is >= the k-th largest (ties at the threshold are kept); top-p keeps,
    in descending probability order, every token whose preceding cumulative probability is < top_p (the
    most likely token always survives). Removed tokens get -inf.
    """
    neg_inf = jnp.array(-jnp.inf, log_probs.dtype)
    logits = log_probs / temperature
    if top_k > 0 and top_k < logits.shape[-1]:
        kth_largest = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth_largest, neg_inf, logits)
    if top_p < 1.0:
        sorted_logits, order = jax.lax.top_k(logits, logits.shape[-1])
        sorted_probs = jax.nn.softmax(sorted_logits, axis=-1)
        mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
        keep_sorted = mass_before < top_p
        keep = jnp.zeros_like(keep_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
        logits = jnp.where(keep, logits, neg_inf)
    return logits


def sample(decode_step: DecodeStep, init_state: Any, src_len: jax.Array, rng: jax.Array, *,
           temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, max_len_a: float, max_len_b: float,
           max_len_bound: int, min_len: int = 0, no_repeat_ngram_size: int = 0, eos_id: int = EOS_ID,
           bos_id: int = BOS_ID, prefix: jax.Array | None = None, prefix_len: jax.Array | None = None):
    """Ancestral sampling with temperature, top-k (0 = off) and nucleus top-p (1.0 = off). Jittable.

    Step ``t`` draws with ``jax.random.fold_in(rng, t)``, so a seed reproduces the output (for the same
    batch layout: rows of a batch share the step key). Bans, limits and the prefix
    rule are those of beam search.
    Returns ``(tokens [B, L], lengths [B], scores [B], attention [B, L, S] or None)``; scores are the
    summed model log-probs of the sampled tokens (temperature 1, no filtering, no length penalty).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")

    def choose(log_probs: jax.Array, step: jax.Array) -> jax.Array:
        logits = _sampling_logits(log_probs, temperature=temperature, top_k=top_k, top_p=top_p)
        return jax.random.categorical(jax.random.fold_in(rng, step), logits, axis=-1)

    final = _sequential_decode(decode_step, init_state, src_len, choose, min_len=min_len, max_len_a=max_len_a,
                               max_len_b=max_len_b, max_len_bound=max_len_bound,
                               no_repeat_ngram_size=no_repeat_ngram_size, eos_id=eos_id, bos_id=bos_id,
                               prefix=prefix, prefix_len=prefix_len)
    return final.tokens, final.lengths, final.sums, final.attention
