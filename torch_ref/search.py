"""Greedy and beam search in plain PyTorch (no JAX), over a model-agnostic ``decode_step``.

    decode_step(state, tokens [N]) -> (logits [N, V], new_state)

``state`` is a dict (nested dicts, lists and tuples allowed) of tensors with the hypotheses as leading
axis; a key ``"attention"`` ``[N, S]`` in the returned state is recorded. Token ids: pad 0, bos 2, eos 3.

The reference twin of ``seq2seq_jax.decoding``: the same rules (numbered in docs/search.md), written as a
Python loop over steps with per-sentence bookkeeping in Python lists, so that the parity tests compare two
independent implementations. Both take the settings as one ``DecodeConfig`` and return a ``BeamResult``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from seq2seq_jax.core.config import DecodeConfig
from seq2seq_jax.core.search_settings import max_len_for
from seq2seq_jax.core.tokens import BOS_ID, EOS_ID, PAD_ID

DecodeStep = Callable[[Any, torch.Tensor], tuple[torch.Tensor, Any]]


class BeamResult(NamedTuple):
    """tokens [B, n_best, L] long (pad after the length); lengths [B, n_best] long (EOS included);
    scores [B, n_best] (length-normalised, best first); attention [B, n_best, L, S] or None."""

    tokens: torch.Tensor
    lengths: torch.Tensor
    scores: torch.Tensor
    attention: torch.Tensor | None


def length_penalty_factor(length: int, alpha: float) -> float:
    """``lp(n) = ((5 + n) / 6) ** alpha``."""
    return ((5.0 + length) / 6.0) ** alpha


def banned_ngram_tokens(history: list[int], ngram_size: int) -> set[int]:
    """Tokens that would complete an n-gram already present in ``history`` (the generated tokens)."""
    if ngram_size <= 0 or len(history) < ngram_size:
        return set()
    prefix = history[len(history) - ngram_size + 1:]
    return {history[start + ngram_size - 1] for start in range(len(history) - ngram_size + 1)
            if history[start:start + ngram_size - 1] == prefix}


def _map_state(fn: Callable[[torch.Tensor], torch.Tensor], state: Any) -> Any:
    if isinstance(state, torch.Tensor):
        return fn(state)
    if isinstance(state, dict):
        return {key: _map_state(fn, value) for key, value in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_map_state(fn, value) for value in state)
    return state


def _score_dtype(logits: torch.Tensor) -> torch.dtype:
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def _apply_bans(log_probs: torch.Tensor, histories: list[list[int]], generated: int,
                settings: DecodeConfig) -> torch.Tensor:
    """Rule 4. log_probs [N, V]; histories: the N hypotheses' generated tokens. Returns a banned copy."""
    log_probs = log_probs.clone()
    if generated < settings.min_len:
        log_probs[:, EOS_ID] = -math.inf
    if settings.banned_ids:
        log_probs[:, list(settings.banned_ids)] = -math.inf
    if settings.no_repeat_ngram_size > 0:
        for row, history in enumerate(histories):
            for token in banned_ngram_tokens(history, settings.no_repeat_ngram_size):
                log_probs[row, token] = -math.inf
    return log_probs


def _force_prefix(log_probs: torch.Tensor, unbanned: torch.Tensor, prefixes: list[list[int]],
                  generated: int) -> torch.Tensor:
    """Rule 10: a row whose prefix (``prefixes[row]``, token ids) is at least ``generated`` long keeps only
    ``prefixes[row][generated - 1]``, at its unbanned log-prob; log_probs/unbanned [N, V]. Returns a copy."""
    log_probs = log_probs.clone()
    for row, prefix in enumerate(prefixes):
        if generated <= len(prefix):
            token = prefix[generated - 1]
            log_probs[row] = -math.inf
            log_probs[row, token] = unbanned[row, token]
    return log_probs


def _prefix_lists(prefix: torch.Tensor | None, prefix_len: torch.Tensor | None, batch: int) -> list[list[int]]:
    """Per sentence, its prefix token ids (``prefix [B, P]`` cut at ``prefix_len [B]``); empty lists without."""
    if (prefix is None) != (prefix_len is None):
        raise ValueError("prefix and prefix_len go together: give both or neither")
    if prefix is None:
        return [[] for _ in range(batch)]
    lengths = [int(n) for n in torch.as_tensor(prefix_len).reshape(-1).tolist()]
    if len(lengths) != batch or torch.as_tensor(prefix).shape[0] != batch:
        raise ValueError(f"need prefix [{batch}, P] and prefix_len [{batch}]")
    return [[int(t) for t in row[:n].tolist()] for row, n in zip(torch.as_tensor(prefix), lengths, strict=True)]


@dataclass
class _Hypothesis:
    tokens: list[int] = field(default_factory=list)
    attention: list[torch.Tensor] = field(default_factory=list)  # one [S] per token


@dataclass
class _Finished:
    score: float
    tokens: list[int]
    attention: list[torch.Tensor]


def _pack(per_sentence: list[list[_Finished]], n_best: int, buffer_len: int, dtype: torch.dtype,
          attention_width: int | None) -> BeamResult:
    batch = len(per_sentence)
    tokens = torch.full((batch, n_best, buffer_len), PAD_ID, dtype=torch.long)
    lengths = torch.zeros((batch, n_best), dtype=torch.long)
    scores = torch.full((batch, n_best), -math.inf, dtype=dtype)
    attention = None if attention_width is None else torch.zeros((batch, n_best, buffer_len, attention_width),
                                                                  dtype=dtype)
    for b, finished in enumerate(per_sentence):
        for slot, hyp in enumerate(finished[:n_best]):
            length = len(hyp.tokens)
            tokens[b, slot, :length] = torch.tensor(hyp.tokens, dtype=torch.long)
            lengths[b, slot] = length
            scores[b, slot] = hyp.score
            if attention is not None and length:
                attention[b, slot, :length] = torch.stack(hyp.attention)
    return BeamResult(tokens, lengths, scores, attention)


def _beam_step(candidates: torch.Tensor, alive: list[_Hypothesis], finished: list[_Finished], *, beams: int,
               vocab: int, generated: int, max_len: int, alpha: float, dtype: torch.dtype,
               step_attention: torch.Tensor | None):
    """One sentence's step of rules 5-8: ``candidates [K*V]`` are the alive sums plus the step's log-probs.

    Returns ``(alive, alive sums [K] as floats, source beams [K], finished, done)``.
    """
    order = torch.sort(candidates, descending=True, stable=True).indices[:2 * beams].tolist()
    cand_sums = candidates[order]
    cands = []  # (sum tensor, source beam, token, new hypothesis)
    for rank, flat in enumerate(order):
        beam, token = divmod(flat, vocab)
        source = alive[beam]
        attention = source.attention + ([step_attention[beam]] if step_attention is not None else [])
        cands.append((cand_sums[rank], beam, token, _Hypothesis(source.tokens + [token], attention)))

    # Rule 6: ranks < K that are EOS, or everything ranked < K at the length limit, finish.
    penalty = torch.tensor(length_penalty_factor(generated, alpha), dtype=dtype)
    new_finished = [_Finished(float(cand_sum / penalty) if token == EOS_ID or generated >= max_len else -math.inf,
                              hyp.tokens, hyp.attention) for cand_sum, _beam, token, hyp in cands[:beams]]
    finished = sorted(finished + new_finished, key=lambda hyp: -hyp.score)[:beams]  # stable: old slots first

    # Rule 7: the best K non-EOS candidates stay alive.
    alive_keys = [-math.inf if token == EOS_ID else float(cand_sum) for cand_sum, _, token, _ in cands]
    kept = sorted(range(2 * beams), key=lambda rank: -alive_keys[rank])[:beams]

    # Rule 8: done at the length limit or when no alive hypothesis can beat the worst finished one.
    best_alive = torch.tensor(alive_keys[kept[0]], dtype=dtype)
    bound_length = max_len if alpha >= 0 else generated + 1
    bound = float(best_alive / torch.tensor(length_penalty_factor(bound_length, alpha), dtype=dtype))
    done = generated >= max_len or bound <= finished[-1].score
    return ([cands[rank][3] for rank in kept], [alive_keys[rank] for rank in kept], [cands[rank][1] for rank in kept],
            finished, done)


@torch.no_grad()
def beam_search(decode_step: DecodeStep, init_state: Any, src_len: torch.Tensor, settings: DecodeConfig, *,
                max_len_bound: int, prefix: torch.Tensor | None = None,
                prefix_len: torch.Tensor | None = None) -> BeamResult:
    """Beam search of ``settings.beam_size`` beams (the algorithm of ``seq2seq_jax.decoding``), a Python loop.

    init_state: leaves ``[B, ...]``; src_len ``[B]``; optional target prefix ``prefix [B, P]`` with
    ``prefix_len [B]`` (0 = none). Returns BeamResult (torch tensors) with tokens
    ``[B, n_best, max_len_bound]``, lengths/scores ``[B, n_best]``, attention ``[B, n_best, L, S]`` or None.
    """
    beams, buffer_len, alpha = settings.beam_size, max_len_bound, settings.length_penalty
    src_lengths = [int(s) for s in torch.as_tensor(src_len).reshape(-1).tolist()]
    batch = len(src_lengths)
    max_lens = [min(max_len_for(s, settings.max_len_a, settings.max_len_b), buffer_len) for s in src_lengths]
    prefixes = [sentence for sentence in _prefix_lists(prefix, prefix_len, batch) for _ in range(beams)]

    state = _map_state(lambda leaf: leaf.repeat_interleave(beams, dim=0), init_state)
    alive = [[_Hypothesis() for _ in range(beams)] for _ in range(batch)]
    alive_sums: torch.Tensor | None = None  # [B, K], created with the first logits' dtype
    finished: list[list[_Finished]] = [[_Finished(-math.inf, [], []) for _ in range(beams)] for _ in range(batch)]
    done = [False] * batch
    dtype, attention_width = torch.float32, None

    for step in range(buffer_len):
        if all(done):
            break
        generated = step + 1
        last_tokens = torch.tensor([hyp.tokens[-1] if hyp.tokens else BOS_ID for sentence in alive for hyp in sentence],
                                   dtype=torch.long)
        logits, new_state = decode_step(state, last_tokens)
        dtype = _score_dtype(logits)
        if alive_sums is None:
            alive_sums = torch.full((batch, beams), -math.inf, dtype=dtype)
            alive_sums[:, 0] = 0.0
        unbanned = torch.log_softmax(logits.to(dtype), dim=-1)
        log_probs = _apply_bans(unbanned, [hyp.tokens for sentence in alive for hyp in sentence], generated, settings)
        log_probs = _force_prefix(log_probs, unbanned, prefixes, generated)
        vocab = log_probs.shape[1]
        log_probs = log_probs.reshape(batch, beams, vocab)
        step_attention = new_state.get("attention") if isinstance(new_state, dict) else None
        if step_attention is not None:
            attention_width = step_attention.shape[1]
            step_attention = step_attention.to(dtype).reshape(batch, beams, attention_width)

        source_rows = list(range(batch * beams))
        new_alive_sums = alive_sums.clone()
        for b in range(batch):
            if done[b]:
                continue
            alive[b], sums, source_beams, finished[b], done[b] = _beam_step(
                (alive_sums[b][:, None] + log_probs[b]).reshape(-1), alive[b], finished[b], beams=beams, vocab=vocab,
                generated=generated, max_len=max_lens[b], alpha=alpha, dtype=dtype,
                step_attention=None if step_attention is None else step_attention[b])
            for k, (total, beam) in enumerate(zip(sums, source_beams, strict=True)):
                new_alive_sums[b, k] = total
                source_rows[b * beams + k] = b * beams + beam

        alive_sums = new_alive_sums
        rows = torch.tensor(source_rows, dtype=torch.long)
        state = _map_state(lambda leaf, rows=rows: leaf.index_select(0, rows), new_state)

    return _pack(finished, settings.n_best, buffer_len, dtype, attention_width)


@torch.no_grad()
def greedy_search(decode_step: DecodeStep, init_state: Any, src_len: torch.Tensor, settings: DecodeConfig, *,
                  max_len_bound: int, prefix: torch.Tensor | None = None,
                  prefix_len: torch.Tensor | None = None) -> BeamResult:
    """The plain argmax loop (first index on ties) with the bans, limits and prefix rule of beam search; n_best = 1.

    ``settings.beam_size`` is not read. Equals ``beam_search`` with one beam when ``length_penalty == 0``.
    """
    src_lengths = [int(s) for s in torch.as_tensor(src_len).reshape(-1).tolist()]
    batch = len(src_lengths)
    max_lens = [min(max_len_for(s, settings.max_len_a, settings.max_len_b), max_len_bound) for s in src_lengths]
    prefixes = _prefix_lists(prefix, prefix_len, batch)
    hyps = [_Hypothesis() for _ in range(batch)]
    sums: list[torch.Tensor | None] = [None] * batch
    done = [False] * batch
    state, dtype, attention_width = init_state, torch.float32, None
    for step in range(max_len_bound):
        if all(done):
            break
        generated = step + 1
        last_tokens = torch.tensor([hyp.tokens[-1] if hyp.tokens else BOS_ID for hyp in hyps], dtype=torch.long)
        logits, state = decode_step(state, last_tokens)
        dtype = _score_dtype(logits)
        unbanned = torch.log_softmax(logits.to(dtype), dim=-1)
        log_probs = _apply_bans(unbanned, [hyp.tokens for hyp in hyps], generated, settings)
        log_probs = _force_prefix(log_probs, unbanned, prefixes, generated)
        step_attention = state.get("attention") if isinstance(state, dict) else None
        if step_attention is not None:
            attention_width = step_attention.shape[1]
        tokens = [prefixes[b][step] if generated <= len(prefixes[b]) else token
                  for b, token in enumerate(log_probs.argmax(dim=-1).tolist())]
        for b, token in enumerate(tokens):
            if done[b]:
                continue
            token_log_prob = log_probs[b, token]
            sums[b] = token_log_prob if sums[b] is None else sums[b] + token_log_prob
            hyps[b].tokens.append(token)
            if step_attention is not None:
                hyps[b].attention.append(step_attention[b].to(dtype))
            done[b] = token == EOS_ID or generated >= max_lens[b]
    finished = []
    for hyp, total in zip(hyps, sums, strict=True):
        penalty = torch.tensor(length_penalty_factor(len(hyp.tokens), settings.length_penalty), dtype=dtype)
        finished.append([_Finished(float(total / penalty), hyp.tokens, hyp.attention)])
    return _pack(finished, 1, max_len_bound, dtype, attention_width)
