"""Scores of given translations (forced decoding), as ``seq2seq score`` and ``python -m torch_ref.score`` write
them, and the perplexity of a summed loss. JAX-free: ``torch_ref`` uses it too; the scoring itself is
``seq2seq_jax.decoding.scoring`` (JAX) and ``torch_ref.score`` (PyTorch).

A pair's score is the sum of the log-probabilities of its target pieces *and the final EOS* under the model
(teacher forcing from BOS), its ``count`` the number of pieces plus one. Every pair is scored: an empty target
is EOS alone, and an empty or blank source is the empty source ``[EOS]``.

Output: one line per pair, in input order, ``sum<TAB>mean<TAB>count`` (``mean = sum / count``), or with
``--json`` one JSON object per line ``{"log_prob": sum, "mean": mean, "count": count}``. The corpus summary
(``corpus_summary``: pairs, pieces, total log-probability and perplexity ``exp(-total / pieces)``) goes to
stderr, so that stdout stays one line per pair.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from seq2seq_jax.core.reading import check_same_line_count, read_lines


class PairScore(NamedTuple):
    """``log_prob``: the summed log-probability of the target pieces and EOS; ``count``: pieces + 1."""

    log_prob: float
    count: int

    @property
    def mean(self) -> float:
        return self.log_prob / self.count


def perplexity(loss_sum: float, token_count: int | float) -> float:
    """``exp(loss_sum / token_count)`` from a summed token cross-entropy (nats); inf when it overflows."""
    if not token_count > 0:
        raise ValueError(f"perplexity needs a positive token count, got {token_count}")
    mean_loss = float(loss_sum) / float(token_count)
    if math.isnan(mean_loss):
        return math.nan
    try:
        return math.exp(mean_loss)
    except OverflowError:
        return math.inf


def corpus_perplexity(scores: Sequence[PairScore]) -> float:
    """``exp(-sum of log_prob / sum of count)`` over the pairs (nan without pairs, inf when it overflows)."""
    pieces = sum(score.count for score in scores)
    return perplexity(-sum(score.log_prob for score in scores), pieces) if pieces else math.nan


def corpus_summary(scores: Sequence[PairScore]) -> dict[str, float | int]:
    return {"pairs": len(scores), "pieces": sum(score.count for score in scores),
            "log_prob": sum(score.log_prob for score in scores), "perplexity": corpus_perplexity(scores)}


def format_score(score: PairScore, as_json: bool = False) -> str:
    """One output line (without the newline): ``sum<TAB>mean<TAB>count`` or a JSON object."""
    if as_json:
        return json.dumps({"log_prob": score.log_prob, "mean": score.mean, "count": score.count})
    return f"{score.log_prob:.6f}\t{score.mean:.6f}\t{score.count}"


def format_summary(scores: Sequence[PairScore], as_json: bool = False) -> str:
    summary = corpus_summary(scores)
    if as_json:
        return json.dumps(summary)
    return ("{pairs} pairs, {pieces} target pieces (EOS included), log-probability {log_prob:.4f}, "
            "perplexity {perplexity:.4f}".format(**summary))


def read_pairs(src_path: str | Path, tgt_path: str | Path) -> tuple[list[str], list[str]]:
    """The source and target lines to score; unequal line counts are an error naming both files and the first
    line without a counterpart."""
    sources, targets = read_lines(src_path).lines, read_lines(tgt_path).lines
    check_same_line_count(str(src_path), sources, str(tgt_path), targets)
    return sources, targets
