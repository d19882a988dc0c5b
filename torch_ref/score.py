"""Score given translations (forced decoding) with PyTorch alone, the twin of ``seq2seq_jax/decoding/scoring.py``::

    python -m torch_ref.score DIR [DIR ...] --src F --tgt F [--json] [--output F] [--batch-size B] [--tgt-lang L]

Per pair, one teacher-forced pass from BOS, ``log_softmax``, and the sum of the log-probabilities of the
target pieces and EOS (``seq2seq_jax.core.pair_scores``: formats, corpus perplexity on stderr). Several export
directories score as an ensemble (the mean of the models' probabilities). No JAX anywhere.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch

from seq2seq_jax.core.config import ConfigError
from seq2seq_jax.core.decode_flags import add_language_flag
from seq2seq_jax.core.pair_scores import PairScore, format_score, format_summary, read_pairs
from seq2seq_jax.core.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer, TokenizerError
from torch_ref.ensemble import Ensemble, load_ensemble, mean_log_probs
from torch_ref.load import languages as read_languages
from torch_ref.model import Seq2Seq


def _log_probs(model: Seq2Seq | Ensemble, src: torch.Tensor, src_len: torch.Tensor,
               tgt_in: torch.Tensor) -> torch.Tensor:
    """``[B, T, V]`` log-probabilities of the model, or ``mean_log_probs`` of an ensemble's models."""
    members = list(model.models) if isinstance(model, Ensemble) else [model]
    log_probs = []
    for member in members:
        logits = member(src, src_len, tgt_in)
        dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        log_probs.append(torch.log_softmax(logits.to(dtype), dim=-1))
    return log_probs[0] if len(log_probs) == 1 else mean_log_probs(log_probs)


@torch.no_grad()
def score_ids(model: Seq2Seq | Ensemble, src_ids: Sequence[Sequence[int]], tgt_ids: Sequence[Sequence[int]],
              batch_size: int = 64) -> list[PairScore]:
    """Scores of pairs given as token ids (sources without EOS, targets without BOS/EOS), in input order."""
    if len(src_ids) != len(tgt_ids):
        raise ValueError(f"{len(src_ids)} sources but {len(tgt_ids)} targets")
    model.eval()
    device = next(model.parameters()).device
    scores: list[PairScore | None] = [None] * len(src_ids)
    order = sorted(range(len(src_ids)), key=lambda i: (len(src_ids[i]), len(tgt_ids[i])))
    for start in range(0, len(order), batch_size):
        indices = order[start:start + batch_size]
        src_len = torch.tensor([len(src_ids[i]) + 1 for i in indices])
        tgt_len = torch.tensor([len(tgt_ids[i]) + 1 for i in indices])
        src = torch.full((len(indices), int(src_len.max())), PAD_ID, dtype=torch.long)
        tgt_in = torch.full((len(indices), int(tgt_len.max())), PAD_ID, dtype=torch.long)
        tgt_out = torch.full_like(tgt_in, PAD_ID)
        for row, index in enumerate(indices):
            src[row, :src_len[row]] = torch.tensor(list(src_ids[index]) + [EOS_ID])
            tgt_in[row, :tgt_len[row]] = torch.tensor([BOS_ID] + list(tgt_ids[index]))
            tgt_out[row, :tgt_len[row]] = torch.tensor(list(tgt_ids[index]) + [EOS_ID])
        log_probs = _log_probs(model, src.to(device), src_len.to(device), tgt_in.to(device))
        token = log_probs.gather(-1, tgt_out.to(device)[..., None])[..., 0].cpu()
        mask = torch.arange(token.shape[1])[None, :] < tgt_len[:, None]
        sums = torch.where(mask, token, torch.zeros_like(token)).sum(dim=1)
        for row, index in enumerate(indices):
            scores[index] = PairScore(float(sums[row]), int(tgt_len[row]))
    return scores  # type: ignore[return-value]


def score(model: Seq2Seq | Ensemble, src_tokenizer: Tokenizer, tgt_tokenizer: Tokenizer, sources: Sequence[str],
          targets: Sequence[str], batch_size: int = 64) -> list[PairScore]:
    """Scores of (source, target) text pairs, in input order; a blank source is the empty source ``[EOS]``."""
    return score_ids(model, [src_tokenizer.encode(s) for s in sources], [tgt_tokenizer.encode(t) for t in targets],
                     batch_size)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m torch_ref.score",
                                     description="Score given translations with PyTorch alone (forced decoding); "
                                                 "several export directories score as an ensemble.")
    parser.add_argument("directories", nargs="+", metavar="DIR", help="export directory (repeat for an ensemble)")
    parser.add_argument("--src", required=True, help="source sentences, one per line")
    parser.add_argument("--tgt", required=True, help="target sentences to score, line-aligned with --src")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--output", help="write this file instead of stdout")
    parser.add_argument("--batch-size", type=int, default=64)
    add_language_flag(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        sources, targets = read_pairs(args.src, args.tgt)
        model, src_tokenizer, tgt_tokenizer = load_ensemble(args.directories)
        src_tokenizer = read_languages(args.directories[0]).source_tokenizer(src_tokenizer, args.tgt_lang)
        scores = score(model, src_tokenizer, tgt_tokenizer, sources, targets, args.batch_size)
    except (ConfigError, TokenizerError, ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"torch_ref.score: error: {error}", file=sys.stderr)
        return 2
    text = "".join(format_score(pair, args.json) + "\n" for pair in scores)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(text)
    else:
        sys.stdout.write(text)
    print(format_summary(scores, args.json), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
