"""Padding of token-budget batches (``data.max_tokens``) against row batches (``data.batch_size``) on a corpus.

    python scripts/padding_report.py [--config scripts/recipes/multi30k_baseline.json]
        [--src /work/shared/data/multi30k/train.en] [--tgt /work/shared/data/multi30k/train.de]
        [--tokenizer-dir DIR] [--max-tokens N ...] [--set data.KEY=VALUE ...]

The pairs are read and tokenized as training does (the config's data section: tokenizer, vocabulary, length
limits, bucket widths; ``--set`` changes them): the tokenizers of ``--tokenizer-dir`` when it holds them (a
workdir's ``tokenizer`` folder), else trained on the source and target files and saved there (a temporary
folder by default).
For row batches of ``data.batch_size`` and for each token budget it reports one epoch: batches, mean real rows
per batch, the padded shapes (the compiled train programs), the largest batch (padded tokens of the longer
side), and the padding fraction: padded token slots that are padding, per side and in total (padding rows
included; the share of all slots in padding rows is shown on its own). An epoch's batches are cut inside
buckets, so these totals do not depend on the epoch's shuffle: the script counts the ``eval_batches`` pass,
the same batches in another order.

Besides the ``--max-tokens`` values it reports the budget whose epoch has as many batches as row batching
(the same number of updates per epoch): the smallest multiple of 8 with no more batches.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from seq2seq_jax.core.batching import BatchPolicy, batch_shapes, eval_batches, round_up
from seq2seq_jax.core.config import ExperimentConfig
from seq2seq_jax.core.encoding import encode_pairs
from seq2seq_jax.core.reading import read_parallel
from seq2seq_jax.core.tokenizer import build_tokenizers, load_tokenizers

MULTI30K = Path("/work/shared/data/multi30k")


def epoch_report(examples, batch_size: int, widths: tuple[int, int], max_tokens: int) -> dict:
    """The padding and shapes of one epoch of ``examples`` (``max_tokens`` 0: rows of ``batch_size``)."""
    slots = np.zeros(2)
    real = np.zeros(2)
    padding_row_slots = 0
    batches = real_rows = largest = 0
    policy = BatchPolicy(batch_size, widths, max_tokens)
    for batch in eval_batches(examples, policy):
        rows, src_width = batch.src.shape
        tgt_width = batch.tgt_in.shape[1]
        slots += (rows * src_width, rows * tgt_width)
        real += (batch.src_len[batch.index >= 0].sum(), batch.tgt_len.sum())
        padding_row_slots += int((batch.index < 0).sum()) * (src_width + tgt_width)
        batches += 1
        real_rows += int((batch.index >= 0).sum())
        largest = max(largest, rows * max(src_width, tgt_width))
    shapes = batch_shapes(examples, policy)
    padding = 1.0 - real / slots
    return {"batching": f"max_tokens={max_tokens}" if max_tokens else f"batch_size={batch_size}",
            "batches": batches, "mean_rows": real_rows / batches, "shapes": len(shapes),
            "rows": (min(s[0] for s in shapes), max(s[0] for s in shapes)), "largest": largest,
            "padding_src": padding[0], "padding_tgt": padding[1],
            "padding_total": 1.0 - real.sum() / slots.sum(), "padding_rows": padding_row_slots / slots.sum()}


def matching_budget(examples, batch_size: int, widths: tuple[int, int], batches: int) -> int:
    """The smallest multiple of 8 whose token-budget epoch has at most ``batches`` batches."""
    longest = max(max(round_up(len(e.src), widths[0]), round_up(len(e.tgt) + 1, widths[1]))
                  for e in examples)
    low, high = longest // 8, longest * batch_size * 4 // 8  # in units of 8 tokens
    while low < high:
        middle = (low + high) // 2
        count = sum(1 for _ in eval_batches(examples, BatchPolicy(batch_size, widths, middle * 8)))
        low, high = (middle + 1, high) if count > batches else (low, middle)
    return low * 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="scripts/recipes/multi30k_baseline.json")
    parser.add_argument("--src", default=str(MULTI30K / "train.en"))
    parser.add_argument("--tgt", default=str(MULTI30K / "train.de"))
    parser.add_argument("--tokenizer-dir", default="")
    parser.add_argument("--max-tokens", type=int, nargs="*", default=[2048, 4096])
    parser.add_argument("--set", action="append", default=[], metavar="data.KEY=VALUE")
    args = parser.parse_args()

    data_cfg = ExperimentConfig.load(args.config).with_overrides(args.set).data
    pairs = read_parallel(args.src, args.tgt, data_cfg.encoding_errors)
    tokenizer_dir = Path(args.tokenizer_dir or tempfile.mkdtemp(prefix="padding-report-"))
    if (tokenizer_dir / "src.tokenizer.json").is_file():
        src_tok, tgt_tok = load_tokenizers(tokenizer_dir)
    else:
        src_tok, tgt_tok = build_tokenizers(data_cfg, [s for s, _ in pairs.pairs],
                                            [t for _, t in pairs.pairs], tokenizer_dir)
    examples, report = encode_pairs(pairs, src_tok, tgt_tok, data_cfg)
    print(report.summary())
    widths = data_cfg.bucket_widths
    rows = epoch_report(examples, data_cfg.batch_size, widths, 0)
    budgets = [matching_budget(examples, data_cfg.batch_size, widths, rows["batches"])] + args.max_tokens
    results = [rows] + [epoch_report(examples, data_cfg.batch_size, widths, budget) for budget in budgets]
    print(f"\n{len(examples)} pairs of {args.src} / {args.tgt}; tokenizer {data_cfg.tokenizer} "
          f"{src_tok.vocab_size}/{tgt_tok.vocab_size}; bucket widths {widths[0]}/{widths[1]}; one epoch; "
          f"max_tokens={budgets[0]}: the budget with as many batches as batch_size={data_cfg.batch_size}\n")
    print("| batching | batches | mean real rows | rows | padded shapes | largest batch (tokens) "
          "| padding source | padding target | padding total | of which padding rows |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['batching']} | {r['batches']} | {r['mean_rows']:.1f} | {r['rows'][0]}–{r['rows'][1]} "
              f"| {r['shapes']} | {r['largest']} | {r['padding_src']:.1%} | {r['padding_tgt']:.1%} "
              f"| {r['padding_total']:.1%} | {r['padding_rows']:.1%} |")


if __name__ == "__main__":
    main()
