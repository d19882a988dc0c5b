"""The cost of subword sampling: one epoch of sampled segmentations drawn by
``seq2seq_jax.core.segmentation_sampler`` (the trainer's draws: numpy-seeded, the same in every process) against
sentencepiece's own sampling (``encode(enable_sampling=True)``: not replayable) on the same lines, in one run
(a benchmark script, not a test). Run it alone on the machine:

    python scripts/sampling_benchmark.py FILE [FILE ...] [--vocab-size 8000] [--alpha 0.1] [--repeats 3]
        [--json OUT.json]

For unigram (whole lattice, and the 8 best) and BPE-dropout tokenizers of ``--vocab-size`` pieces trained on
the files' lines (the toolkit's tokenizer settings), it times a pass of draws over every line: one warm-up
pass, then the median of ``--repeats`` passes, as lines/s and milliseconds per 1,000 characters, and the ratio
of the two. Prints a Markdown table (and writes ``--json``).
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import sentencepiece

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from seq2seq_jax.core.segmentation_sampler import SegmentationSampler  # noqa: E402
from seq2seq_jax.core.tokenizer import SentencePieceTokenizer  # noqa: E402


def median_seconds(draw, lines: list[str], repeats: int) -> float:
    """The median time of ``repeats`` passes of ``draw`` over ``lines``, after one warm-up pass."""
    times = []
    for repeat in range(repeats + 1):
        start = time.perf_counter()
        for line in lines:
            draw(line)
        if repeat:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def draw_ours(sampler: SegmentationSampler, alpha: float, nbest: int, rng: np.random.Generator, line: str):
    return sampler.draw(line, alpha, nbest, rng)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="text files, one segment per line")
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    lines = [line.rstrip("\n") for path in args.files for line in path.read_text(encoding="utf-8").splitlines()]
    characters = sum(len(line) for line in lines)
    rows = []
    for kind, nbest in (("unigram", -1), ("unigram", 8), ("bpe", -1)):
        tokenizer = SentencePieceTokenizer.train(kind, lines, args.vocab_size, 1.0)
        sampler, rng = SegmentationSampler(tokenizer.model_proto), np.random.default_rng(0)
        processor = sentencepiece.SentencePieceProcessor(model_proto=tokenizer.model_proto)
        ours = median_seconds(functools.partial(draw_ours, sampler, args.alpha, nbest, rng), lines, args.repeats)
        theirs = median_seconds(functools.partial(processor.encode, out_type=int, enable_sampling=True,
                                                  alpha=args.alpha, nbest_size=nbest), lines, args.repeats)
        rows.append({"kind": kind, "nbest_size": nbest, "lines": len(lines), "characters": characters,
                     "seconds": ours, "sentencepiece_seconds": theirs, "ratio": ours / theirs})
    print(f"{len(lines)} lines, {characters} characters ({', '.join(str(p) for p in args.files)}); vocabulary "
          f"{args.vocab_size}, alpha {args.alpha}; median of {args.repeats} after a warm-up; "
          f"{platform.processor() or platform.machine()}")
    print("\n| tokenizer | this sampler: lines/s | ms per 1,000 characters | sentencepiece: lines/s | ratio (time) |")
    print("|---|---|---|---|---|")
    for row in rows:
        lattice = "whole lattice" if row["nbest_size"] < 0 else f"{row['nbest_size']} best"
        name = row["kind"] if row["kind"] == "bpe" else f"unigram, {lattice}"
        print(f"| {name} | {row['lines'] / row['seconds']:,.0f} | {row['seconds'] / characters * 1e6:.2f} | "
              f"{row['lines'] / row['sentencepiece_seconds']:,.0f} | {row['ratio']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps({"alpha": args.alpha, "vocab_size": args.vocab_size, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
