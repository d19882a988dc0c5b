"""Decoding speed of a trained workdir: sentences/s for greedy and beam search at batch 1 and batch 64.

    python scripts/decode_speed.py --workdir runs/demo [--sentences 256] [--repeats 5] [--json out.json]

Inputs are generated from the workdir's built-in task (held-out seed). Each setting is warmed up once
(compilation excluded and reported separately), then timed ``--repeats`` times; the median is reported.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

from seq2seq_jax.tasks import generate_task
from seq2seq_jax.translate import Translator
from seq2seq_jax.workdir import load_trained


def measure(trained, sources, beam_size: int, batch_size: int, repeats: int) -> dict:
    decode = dataclasses.replace(trained.config.decode, beam_size=beam_size, n_best=1, batch_size=batch_size)
    translator = Translator(trained.graphdef, trained.params, trained.src_tokenizer, trained.tgt_tokenizer, decode,
                            trained.config.data.bucket_width)
    start = time.perf_counter()
    translator.translate(sources)
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        translator.translate(sources)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"beam_size": beam_size, "batch_size": batch_size, "sentences": len(sources),
            "sentences_per_s": len(sources) / median, "median_s": median,
            "first_call_s_incl_compile": first, "compiled_programs": translator.compiled_programs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--sentences", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json")
    args = parser.parse_args()
    trained = load_trained(args.workdir)
    sources = [src for src, _ in generate_task(trained.config.data.task, args.sentences, seed=987654)]
    rows = []
    for beam_size in (1, 5):
        for batch_size in (1, 64):
            count = len(sources) if batch_size > 1 else min(len(sources), 32)
            row = measure(trained, sources[:count], beam_size, batch_size, args.repeats)
            rows.append(row)
            print(f"beam {beam_size} batch {batch_size:>2}: {row['sentences_per_s']:8.1f} sentences/s "
                  f"(median of {args.repeats} over {count} sentences; first call incl. compile "
                  f"{row['first_call_s_incl_compile']:.1f} s, {row['compiled_programs']} programs)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
