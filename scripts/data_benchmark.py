"""Data at scale: preprocessing, the loader, training memory and padding on a generated corpus of Multi30k-like
sentences (a benchmark script, not a test). Run it alone on the machine:

    python scripts/data_benchmark.py [--pairs 2000000] [--work-dir DIR] [--multi30k path/to/multi30k]
        [--json OUT.json] [--skip preprocess loader train padding]

1. **Corpus.** ``--pairs`` pairs (seed fixed) of synthetic words: a vocabulary of 8,000 made-up words per
   language drawn with Zipfian frequencies; English sentences of ``round(N(11.9, 3.8))`` words (2-40) and German
   ones of ``round(0.93 en + N(0, 1.5))`` (1-40), Multi30k's word counts (train: 11.9 ± 3.8 En, 11.1 ± 3.8 De).
   Written with 1,000 validation pairs under ``--work-dir`` (default: a temporary folder, removed at the end
   unless ``--keep``); also the first 29,000 pairs as a Multi30k-sized corpus.
2. **Preprocessing**: ``seq2seq preprocess`` of the corpus with 1 and with 2 workers (the Multi30k recipe's data
   settings: unigram tokenizers of 8,000 pieces): pairs/s (wall clock) and the peak RSS of its process tree
   (the sum over the process and its workers, sampled every 50 ms).
3. **Loader**: ``batch_iterator.BatchIterator`` over the preprocessed training split (``corpus.CorpusSplit``),
   pinned to one core, building finished batches as the trainer asks for them: target tokens/s (real target
   tokens: ``tgt_len`` summed) for row batches and token budgets, with no background thread and with the
   trainer's one; and the same over the examples held in memory (a list), the loader's own cost.
4. **Training memory**: ``seq2seq train --data D`` for a few steps of a small model, on the full corpus and on
   the Multi30k-sized one: the peak RSS of the training process.
5. **Padding** on Multi30k (``--multi30k``; skipped, saying so, when the folder is absent): one epoch of row
   batches against token budgets, by ``scripts/padding_report.py``'s ``epoch_report``.

Prints a Markdown summary (and writes ``--json``). Needs psutil for the process-tree RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

from padding_report import epoch_report, matching_budget  # noqa: E402

from seq2seq_jax.core.batching import BatchPolicy  # noqa: E402
from seq2seq_jax.core.encoding import encode_pairs  # noqa: E402
from seq2seq_jax.core.reading import read_parallel  # noqa: E402
from seq2seq_jax.training.batch_iterator import BatchIterator  # noqa: E402

RECIPE = ROOT / "scripts" / "recipes" / "multi30k_baseline.json"
MULTI30K_PAIRS = 29_000
VALID_PAIRS = 1_000
WORDS = 8_000
SEED = 0
# A small model for the training-memory runs: the data path is what is measured, not the model.
SMALL_MODEL = ["model.src_embed_size=32", "model.tgt_embed_size=32", "model.enc_hidden_size=32",
               "model.dec_hidden_size=32", "model.attention_size=32", "model.readout_size=32"]


# ------------------------------------------------------------------------------------------------ corpus

def _vocabulary(rng: np.random.Generator, size: int) -> np.ndarray:
    """``size`` distinct made-up lowercase words of 2-10 letters, in random order (the Zipf ranks)."""
    words: set[str] = set()
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    while len(words) < size:
        for length in rng.integers(2, 11, size):
            words.add("".join(rng.choice(letters, length)))
    return rng.permutation(np.array(sorted(words)[:size]))


def write_corpus(folder: Path, pairs: int, seed: int = SEED) -> dict[str, Path]:
    """``train.en/train.de`` (``pairs`` lines), ``valid.en/valid.de`` and ``small.en/small.de`` (the first
    ``MULTI30K_PAIRS`` training pairs) in ``folder``; see the module docstring for the distributions."""
    rng = np.random.default_rng(seed)
    vocab = {"en": _vocabulary(rng, WORDS), "de": _vocabulary(rng, WORDS)}
    zipf = 1.0 / np.arange(1, WORDS + 1) ** 1.05
    zipf /= zipf.sum()
    paths = {f"{split}.{lang}": folder / f"{split}.{lang}" for split in ("train", "valid", "small")
             for lang in ("en", "de")}
    handles = {name: path.open("w", encoding="utf-8") for name, path in paths.items()}
    try:
        for split, total in (("valid", VALID_PAIRS), ("train", pairs)):
            written = 0
            while written < total:
                count = min(100_000, total - written)
                en_len = np.clip(np.rint(rng.normal(11.9, 3.8, count)), 2, 40).astype(np.int64)
                de_len = np.clip(np.rint(0.93 * en_len + rng.normal(0, 1.5, count)), 1, 40).astype(np.int64)
                for lang, lengths in (("en", en_len), ("de", de_len)):
                    words = vocab[lang][rng.choice(WORDS, int(lengths.sum()), p=zipf)]
                    ends = np.cumsum(lengths)
                    lines = [" ".join(words[end - n: end]) for n, end in zip(lengths, ends, strict=True)]
                    text = "\n".join(lines) + "\n"
                    handles[f"{split}.{lang}"].write(text)
                    small = MULTI30K_PAIRS - written
                    if split == "train" and small > 0:
                        handles[f"small.{lang}"].write("\n".join(lines[:small]) + "\n")
                written += count
    finally:
        for handle in handles.values():
            handle.close()
    return paths


# ------------------------------------------------------------------------------------------ measurement

class TreeMemory:
    """Peak RSS of a process and all its descendants together, sampled every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.05):
        import psutil

        self.process, self.interval, self.peak = psutil.Process(pid), interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = 0
            try:
                members = [self.process, *self.process.children(recursive=True)]
            except psutil.Error:
                break
            for member in members:
                try:
                    total += member.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def run_measured(command: list[str], log_path: Path) -> tuple[float, int]:
    """Run ``command`` (output to ``log_path``); ``(wall seconds, peak RSS bytes of its process tree)``.
    A failure raises with the end of its output."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    with log_path.open("w") as log:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        memory = TreeMemory(process.pid)
        returncode = process.wait()
        elapsed = time.perf_counter() - start
        peak = memory.stop()
    if returncode:
        raise SystemExit(f"{' '.join(command)} failed ({returncode}):\n{log_path.read_text()[-4000:]}")
    return elapsed, peak


def seq2seq(*args: str) -> list[str]:
    return [sys.executable, "-m", "seq2seq_jax", *args]


def preprocess(paths: dict[str, Path], split: str, out: Path, workers: int, logs: Path) -> tuple[float, int]:
    command = seq2seq("preprocess", "--train-src", str(paths[f"{split}.en"]), "--train-tgt", str(paths[f"{split}.de"]),
                      "--valid-src", str(paths["valid.en"]), "--valid-tgt", str(paths["valid.de"]),
                      "--config", str(RECIPE), "--out", str(out), "--workers", str(workers))
    return run_measured(command, logs / f"preprocess-{split}-{workers}.log")


def loader_rate(source, seconds: float, policy: BatchPolicy, **reading) -> dict:
    """Finished batches of ``BatchIterator(source, policy, **reading)`` for ``seconds`` on this (pinned) core."""
    iterator = BatchIterator(source, policy, seed=0, **reading)
    next(iterator)  # opens the reader (and its thread)
    tokens = rows = batches = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        batch = next(iterator)
        tokens += int(batch.tgt_len.sum())
        rows += int((batch.index >= 0).sum())
        batches += 1
    iterator.close()
    return {"target_tokens_per_s": tokens / elapsed, "pairs_per_s": rows / elapsed, "batches_per_s": batches / elapsed}


def measure_loader(split, seconds: float) -> list[dict]:
    """Target tokens/s of finished batches on one core: over ``split`` and over its first examples in a list."""
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(previous)})
    in_memory = [split[i] for i in range(min(len(split), 300_000))]
    settings = [("rows: batch_size=64", BatchPolicy(64, 12)),
                ("token budget: max_tokens=4096", BatchPolicy(64, 12, max_tokens=4096))]
    results = []
    try:
        for source_name, source in (("ArrayRecord corpus", split), ("examples in memory", in_memory)):
            for batching_name, batching in settings:
                for threads in (0, 1):
                    result = loader_rate(source, seconds, batching, read_threads=threads, prefetch=4 * threads)
                    results.append({"source": source_name, "batching": batching_name, "threads": threads, **result})
                    print(f"  loader, {source_name}, {batching_name}, {threads} thread(s): "
                          f"{result['target_tokens_per_s'] / 1e6:.2f} M target tokens/s", flush=True)
    finally:
        os.sched_setaffinity(0, previous)
    return results


def train_memory(data_dir: Path, workdir: Path, steps: int, logs: Path) -> tuple[float, int]:
    command = seq2seq("train", "--data", str(data_dir), "--workdir", str(workdir), "--config", str(RECIPE))
    for pair in [*SMALL_MODEL, "data.max_tokens=2048", f"train.max_steps={steps}", f"train.eval_every={steps}",
                 f"train.save_every={steps}", "train.valid_sample_size=8", "train.log_every=10"]:
        command += ["--set", pair]
    return run_measured(command, logs / f"train-{data_dir.name}.log")


def multi30k_padding(folder: Path, budgets: list[int]) -> list[dict] | None:
    """``epoch_report`` rows for row batching and token budgets on Multi30k's training set (the recipe's data
    settings, tokenizers trained on it)."""
    from seq2seq_jax.core.config import ExperimentConfig
    from seq2seq_jax.core.tokenizer import build_tokenizers

    if not (folder / "train.en").is_file():
        print(f"Multi30k not found in {folder} (train.en): padding not measured")
        return None
    data_cfg = ExperimentConfig.load(RECIPE).data
    pairs = read_parallel(folder / "train.en", folder / "train.de", data_cfg.encoding_errors)
    src_tok, tgt_tok = build_tokenizers(data_cfg, [s for s, _ in pairs.pairs],
                                            [t for _, t in pairs.pairs], tempfile.mkdtemp())
    examples, _ = encode_pairs(pairs, src_tok, tgt_tok, data_cfg)
    widths = data_cfg.bucket_widths
    rows = epoch_report(examples, data_cfg.batch_size, widths, 0)
    budgets = [matching_budget(examples, data_cfg.batch_size, widths, rows["batches"]), *budgets]
    return [rows] + [epoch_report(examples, data_cfg.batch_size, widths, budget) for budget in budgets]


# ------------------------------------------------------------------------------------------------ report

def mib(size: int) -> str:
    return f"{size / 2 ** 20:,.0f} MiB"


def report(results: dict) -> str:
    lines = [f"{results['pairs']:,} generated pairs ({results['corpus_mib']:,.0f} MiB of text); "
             f"{results['machine']}; {results['date']}; commit {results['commit']}", ""]
    if "preprocess" in results:
        lines += ["| preprocessing | pairs/s | wall | peak RSS (process tree) |", "|---|---|---|---|"]
        for row in results["preprocess"]:
            lines.append(f"| {row['workers']} worker(s) | {row['pairs_per_s']:,.0f} | {row['seconds']:.0f} s "
                         f"| {mib(row['peak_rss'])} |")
        lines.append("")
    if "loader" in results:
        lines += ["| loader (one core) | batching | background threads | target tokens/s | pairs/s |",
                  "|---|---|---|---|---|"]
        for row in results["loader"]:
            lines.append(f"| {row['source']} | {row['batching']} | {row['threads']} "
                         f"| {row['target_tokens_per_s'] / 1e6:.2f} M | {row['pairs_per_s']:,.0f} |")
        lines.append("")
    if "train" in results:
        lines += ["| `train --data`, small model | pairs | steps | peak RSS |", "|---|---|---|---|"]
        for row in results["train"]:
            lines.append(f"| {row['corpus']} | {row['pairs']:,} | {row['steps']} | {mib(row['peak_rss'])} |")
        lines.append("")
    if results.get("padding"):
        lines += ["| Multi30k, one epoch | batches | mean real rows | padded shapes | padding source | padding target "
                  "| padding total |", "|---|---|---|---|---|---|---|"]
        for r in results["padding"]:
            lines.append(f"| {r['batching']} | {r['batches']} | {r['mean_rows']:.1f} | {r['shapes']} "
                         f"| {r['padding_src']:.1%} | {r['padding_tgt']:.1%} | {r['padding_total']:.1%} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=2_000_000)
    parser.add_argument("--work-dir", default="", help="where the corpus and outputs go (default: a temporary "
                                                       "folder in /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep --work-dir's contents")
    parser.add_argument("--multi30k", default="/work/shared/data/multi30k")
    parser.add_argument("--loader-seconds", type=float, default=10.0)
    parser.add_argument("--train-steps", type=int, default=30)
    parser.add_argument("--skip", nargs="*", default=[], choices=["preprocess", "loader", "train", "padding"])
    parser.add_argument("--json", default="")
    args = parser.parse_args()

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="data-benchmark-"))
    work.mkdir(parents=True, exist_ok=True)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    results: dict = {"pairs": args.pairs, "commit": commit, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                     "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                                f"load {os.getloadavg()[0]:.1f}"}
    try:
        start = time.perf_counter()
        paths = write_corpus(work, args.pairs)
        results["corpus_mib"] = (paths["train.en"].stat().st_size + paths["train.de"].stat().st_size) / 2 ** 20
        print(f"corpus: {args.pairs:,} pairs in {time.perf_counter() - start:.0f} s under {work}", flush=True)
        full, small = work / "corpus", work / "corpus-multi30k-size"
        if "preprocess" in args.skip and ("loader" not in args.skip or "train" not in args.skip):
            preprocess(paths, "train", full, 2, logs)  # the corpus the later stages read, not measured
        elif "preprocess" not in args.skip:
            results["preprocess"] = []
            for workers in (1, 2):
                shutil.rmtree(full, ignore_errors=True)
                seconds, peak = preprocess(paths, "train", full, workers, logs)
                results["preprocess"].append({"workers": workers, "seconds": seconds, "peak_rss": peak,
                                              "pairs_per_s": (args.pairs + VALID_PAIRS) / seconds})
                print(f"  preprocess, {workers} worker(s): {(args.pairs + VALID_PAIRS) / seconds:,.0f} pairs/s, "
                      f"peak RSS {mib(peak)}", flush=True)
        if "loader" not in args.skip:
            from seq2seq_jax.training.corpus import open_corpus

            results["loader"] = measure_loader(open_corpus(full).split("train"), args.loader_seconds)
        if "train" not in args.skip:
            preprocess(paths, "small", small, 1, logs)
            results["train"] = []
            for name, folder, pairs in (("generated, full", full, args.pairs),
                                        ("generated, Multi30k-sized", small, MULTI30K_PAIRS)):
                seconds, peak = train_memory(folder, work / f"run-{folder.name}", args.train_steps, logs)
                results["train"].append({"corpus": name, "pairs": pairs, "steps": args.train_steps,
                                         "seconds": seconds, "peak_rss": peak})
                print(f"  train --data {folder.name}: peak RSS {mib(peak)} ({seconds:.0f} s)", flush=True)
        if "padding" not in args.skip:
            results["padding"] = multi30k_padding(Path(args.multi30k), [2048, 4096])
    finally:
        if not args.keep and not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    print()
    print(report(results))


if __name__ == "__main__":
    main()
