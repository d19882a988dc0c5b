"""The rules beam search, greedy search and sampling share (docs/search.md holds the numbered contract).

Length limits and the length penalty (host-side float64 tables), the probe that checks a ``decode_step``'s
state, the ``min_len`` / no-repeat bans (rule 4), the target-prefix forcing (rule 10) and the exact top-k and
argmax the searches rank with. Everything here is jittable or host-side Python; nothing is model-specific.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from seq2seq_jax.core.config import DecodeConfig
from seq2seq_jax.core.search_settings import max_len_for
from seq2seq_jax.core.tokens import EOS_ID

DecodeStep = Callable[[Any, jax.Array], tuple[jax.Array, Any]]

# src lengths beyond this many tokens share the table entry of this length (a length limit that is still
# below max_len_bound here needs max_len_a < max_len_bound / 65536: not a real setting).
_MAX_TABLE_SRC_LEN = 1 << 16


class BeamResult(NamedTuple):
    """n-best output of every search (``n_best = 1`` for greedy search and sampling).

    tokens    [B, n_best, L] int32, pad (0) after the last token
    lengths   [B, n_best] int32, generated tokens including EOS
    scores    [B, n_best] float, ``sum_logprob / lp(length)``, best first (sampling: ``sum_logprob``)
    attention [B, n_best, L, S] float, zeros after the length; None if the state has no "attention"
    """

    tokens: jax.Array
    lengths: jax.Array
    scores: jax.Array
    attention: jax.Array | None


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


def max_len_per_sentence(src_len: jax.Array, max_len_a: float, max_len_b: float, max_len_bound: int) -> jax.Array:
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


def check_bound(max_len_bound: int) -> None:
    """``max_len_bound`` sizes the output buffers: it must be a static positive int."""
    if not isinstance(max_len_bound, (int, np.integer)) or max_len_bound < 1:
        raise ValueError(f"max_len_bound must be a positive Python int (static), got {max_len_bound!r}")


def score_dtype(logits_dtype) -> jnp.dtype:
    """float32, or float64 when the model computes in float64."""
    return jnp.promote_types(logits_dtype, jnp.float32)


def prepare_state(decode_step: DecodeStep, state: Any, num_rows: int):
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
    return state, logits.shape[1], score_dtype(logits.dtype), width


def ban_tokens(log_probs: jax.Array, history: jax.Array, step: jax.Array, settings: DecodeConfig) -> jax.Array:
    """Apply ``settings``' min_len, banned-id and no-repeat-n-gram bans (rule 4).

    log_probs [N, V]; history [N, L] generated tokens, valid at positions < step; step: traced scalar t.
    Returns log_probs with banned entries at -inf.
    """
    num_rows, vocab = log_probs.shape
    neg_inf = jnp.array(-jnp.inf, log_probs.dtype)
    generated = step + 1  # n: length after this step, EOS included
    if settings.min_len > 1:
        eos_banned = generated < settings.min_len
        log_probs = log_probs.at[:, EOS_ID].set(jnp.where(eos_banned, neg_inf, log_probs[:, EOS_ID]))
    if settings.banned_ids:  # language tags in a joint vocabulary: never an output
        log_probs = log_probs.at[:, jnp.asarray(settings.banned_ids, jnp.int32)].set(neg_inf)
    ngram = settings.no_repeat_ngram_size
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


def check_prefix(prefix: jax.Array | None, prefix_len: jax.Array | None, rows: int):
    """``(prefix [rows, P] int32, prefix_len [rows] int32)``, or ``(None, None)`` without a prefix (or with P = 0)."""
    if (prefix is None) != (prefix_len is None):
        raise ValueError("prefix and prefix_len go together: give both or neither")
    if prefix is None or prefix.shape[1] == 0:
        return None, None
    if prefix.ndim != 2 or prefix.shape[0] != rows or jnp.shape(prefix_len) != (rows,):
        raise ValueError(f"need prefix [{rows}, P] and prefix_len [{rows}], got {prefix.shape} and "
                         f"{jnp.shape(prefix_len)}")
    return jnp.asarray(prefix, jnp.int32), jnp.asarray(prefix_len, jnp.int32)


def prefix_token(prefix: jax.Array, step: jax.Array) -> jax.Array:
    """``prefix [N, P]`` -> the token each row is forced to at step t, ``prefix[:, t]`` (clipped) ``[N]``."""
    return jax.lax.dynamic_index_in_dim(prefix, jnp.minimum(step, prefix.shape[1] - 1), axis=1, keepdims=False)


def force_prefix(log_probs: jax.Array, unbanned: jax.Array, prefix: jax.Array, prefix_len: jax.Array,
                  step: jax.Array) -> jax.Array:
    """Rule 10: rows still inside their prefix keep only the prefix token, at its unbanned log-prob.

    log_probs [N, V] after the bans; unbanned [N, V] before them; prefix [N, P]; prefix_len [N]; step t.
    """
    forced = step < prefix_len  # n = t + 1 <= prefix_len
    is_token = jnp.arange(log_probs.shape[1])[None, :] == prefix_token(prefix, step)[:, None]
    only_token = jnp.where(is_token, unbanned, jnp.array(-jnp.inf, log_probs.dtype))
    return jnp.where(forced[:, None], only_token, log_probs)


# ``top_k`` splits a row into chunks of this many entries.
TOP_K_CHUNK = 64


def top_k(values: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
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


def gather_rows(tree: Any, rows: jax.Array) -> Any:
    """Every leaf of a ``[N, ...]`` pytree at ``rows [M]`` along axis 0 (a reordering when ``M = N``)."""
    return jax.tree_util.tree_map(lambda leaf: jnp.take(leaf, rows, axis=0), tree)
