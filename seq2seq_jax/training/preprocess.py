"""``seq2seq preprocess``: parallel text -> a preprocessed corpus (the format of ``seq2seq_jax.training.corpus``).

Memory does not grow with the corpus: the text is read line by line (``data.iter_parallel`` / ``iter_tsv``), the
tokenizers are trained on a reservoir sample of at most ``data.tokenizer_sample_size`` training pairs (the first
pass; all pairs, in order, when there are fewer), and the second pass tokenizes chunks of pairs in ``workers``
processes, at most two chunks per worker in flight, written in input order, so the output does not depend on
the number of workers. Every pair goes through ``data.encode_pair``, the rules of ``data.encode_pairs``.

The corpus is written in a hidden temporary sibling of the output directory and renamed into place at the end
(``staging``), its manifest last: an interrupted run leaves no output directory, and a directory without a
manifest is never read as a corpus.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import logging
import multiprocessing
import os
import random
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from seq2seq_jax.core.corpora import train_split, valid_split
from seq2seq_jax.core.encoding import DataReport, encode_pair, new_report
from seq2seq_jax.core.languages import TaggedTokenizer, tag_id
from seq2seq_jax.core.reading import DataError, iter_parallel, iter_tsv
from seq2seq_jax.core.tokenizer import SIDE_NAMES, Tokenizer, build_tokenizers, load_tokenizers
from seq2seq_jax.training.corpus import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    REPORT_FILE,
    WRITER_OPTIONS,
    Corpus,
    encode_record,
    is_train_split,
    is_valid_split,
    lengths_name,
    open_corpus,
    record_settings,
    shard_name,
    valid_pairs_name,
)
from seq2seq_jax.training.staging import is_nonempty_dir, staged_directory
from seq2seq_jax.training.tasks import task_splits

logger = logging.getLogger(__name__)

RECORDS_PER_SHARD = 1 << 18
CHUNK_PAIRS = 2048
SAMPLE_SEED = 0


@dataclasses.dataclass(frozen=True)
class PairSource:
    """Where the text of one split comes from: two line-aligned files (``kind="parallel"``), one
    ``source<TAB>target`` file (``"tsv"``), or a built-in task's generated pairs (``"task"``, held in memory:
    such sets are small). Iterating gives ``(source, target, replaced)``."""

    kind: str
    files: tuple[str, ...] = ()
    pairs: tuple[tuple[str, str], ...] = ()
    encoding_errors: str = "strict"

    def __iter__(self) -> Iterator[tuple[str, str, bool]]:
        if self.kind == "parallel":
            return iter_parallel(*self.files, encoding_errors=self.encoding_errors)
        if self.kind == "tsv":
            return iter_tsv(self.files[0], self.encoding_errors)
        return ((source, target, False) for source, target in self.pairs)

    def describe(self) -> dict[str, Any]:
        """What the manifest records of the source: each file's absolute path and size (or the task's kind)."""
        if self.kind == "task":
            return {"kind": "task"}
        files = []
        for name in self.files:
            path = Path(name)
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                raise DataError(f"{path}: file not found") from None
            files.append({"path": str(path.resolve()), "bytes": size})
        return {"kind": self.kind, "files": files}


def pair_sources(data_config) -> dict[str, PairSource]:
    """The ``train`` source and, when configured, the ``valid`` one: files, or the built-in task's splits. With
    ``data.corpora``, ``train.NAME`` of each corpus, then ``valid.NAME`` of each that has validation files."""
    errors = data_config.encoding_errors
    if data_config.corpora:
        sources = {train_split(corpus.name): PairSource("parallel", (corpus.src, corpus.tgt), encoding_errors=errors)
                   for corpus in data_config.corpora}
        return {**sources, **{valid_split(corpus.name): PairSource("parallel", (corpus.valid_src, corpus.valid_tgt),
                                                                    encoding_errors=errors)
                              for corpus in data_config.corpora if corpus.has_valid}}
    if not data_config.uses_files:
        train, valid = task_splits(data_config.task, data_config.task_train_size, data_config.task_valid_size,
                                   data_config.task_seed)
        sources = {"train": PairSource("task", pairs=tuple(train))}
        return {**sources, "valid": PairSource("task", pairs=tuple(valid))} if valid else sources
    if data_config.train_tsv:
        sources = {"train": PairSource("tsv", (data_config.train_tsv,), encoding_errors=errors)}
    else:
        sources = {"train": PairSource("parallel", (data_config.train_src, data_config.train_tgt),
                                       encoding_errors=errors)}
    if data_config.valid_tsv:
        sources["valid"] = PairSource("tsv", (data_config.valid_tsv,), encoding_errors=errors)
    elif data_config.valid_src:
        sources["valid"] = PairSource("parallel", (data_config.valid_src, data_config.valid_tgt),
                                      encoding_errors=errors)
    return sources


def reservoir_sample(pairs, size: int, seed: int = SAMPLE_SEED) -> tuple[list[tuple[str, str]], int]:
    """``(sample, count)``: a uniform sample of at most ``size`` of ``pairs`` (``(source, target, ...)``), in
    their input order (all of them when there are no more), and how many there were. Algorithm R with a fixed
    seed: the same input gives the same sample."""
    rng = random.Random(seed)
    sample: list[tuple[int, str, str]] = []
    count = 0
    for index, (source, target, _) in enumerate(pairs):
        count = index + 1
        if index < size:
            sample.append((index, source, target))
        else:
            slot = rng.randrange(index + 1)
            if slot < size:
                sample[slot] = (index, source, target)
    sample.sort(key=lambda item: item[0])
    return [(source, target) for _, source, target in sample], count


def split_source_tokenizers(data_config, src_tokenizer: Tokenizer) -> dict[str, Tokenizer]:
    """The source tokenizer of each split of a tagged corpus (``data.corpora``): ``src_tokenizer`` with the tag of
    the corpus's target language at ``data.tag_position``. Untagged splits are not listed."""
    tokenizers = {}
    for corpus in data_config.corpora:
        if corpus.tag:
            tagged = TaggedTokenizer(src_tokenizer, [tag_id(src_tokenizer, corpus.tag, f"corpus {corpus.name}")],
                                     data_config.tag_position)
            tokenizers[train_split(corpus.name)] = tokenizers[valid_split(corpus.name)] = tagged
    return tokenizers


class ChunkEncoder:
    """Text pairs -> records: ``(records, lengths [n, 2] int32, kept flags, DataReport)`` of a chunk; the sources
    of a tagged corpus's splits hold its tag (``split_source_tokenizers``)."""

    def __init__(self, src_tokenizer: Tokenizer, tgt_tokenizer: Tokenizer, data_config):
        self.src_tokenizer, self.tgt_tokenizer, self.data_config = src_tokenizer, tgt_tokenizer, data_config
        self.split_tokenizers = split_source_tokenizers(data_config, src_tokenizer)

    def __call__(self, pairs: list[tuple[str, str]], name: str):
        report = new_report(self.data_config, name)
        records, lengths, kept = [], [], []
        src_tokenizer = self.split_tokenizers.get(name, self.src_tokenizer)
        for source, target in pairs:
            example = encode_pair(source, target, src_tokenizer, self.tgt_tokenizer, self.data_config, report)
            kept.append(example is not None)
            if example is not None:
                records.append(encode_record(example))
                lengths.append((len(example.src), len(example.tgt)))
        return records, np.array(lengths, dtype=np.int32).reshape(-1, 2), kept, report


_worker_encoder: ChunkEncoder | None = None


def _start_worker(tokenizer_dir: str, data_config) -> None:
    global _worker_encoder
    _worker_encoder = ChunkEncoder(*load_tokenizers(tokenizer_dir), data_config)


def _encode_in_worker(pairs: list[tuple[str, str]], name: str):
    return _worker_encoder(pairs, name)


class _Encoding:
    """Chunks of text -> their encoded results, in order: in this process (one worker) or in a pool of
    ``workers`` processes (spawned: the caller may hold JAX's threads, which a fork must not copy)."""

    def __init__(self, encoder: ChunkEncoder, tokenizer_dir: Path, data_config, workers: int):
        self.encoder, self.workers = encoder, workers
        self.pool = None
        if workers > 1:
            self.pool = multiprocessing.get_context("spawn").Pool(
                workers, initializer=_start_worker, initargs=(str(tokenizer_dir), data_config))

    def map(self, chunks: Iterator[list[tuple[str, str, bool]]], name: str):
        """``(chunk, result)`` per chunk, in order; at most two chunks per worker wait in memory."""
        if self.pool is None:
            for chunk in chunks:
                yield chunk, self.encoder([(source, target) for source, target, _ in chunk], name)
            return
        pending: collections.deque = collections.deque()
        for chunk in chunks:
            texts = [(source, target) for source, target, _ in chunk]
            pending.append((chunk, self.pool.apply_async(_encode_in_worker, (texts, name))))
            if len(pending) >= 2 * self.workers:
                done, result = pending.popleft()
                yield done, result.get()
        while pending:
            done, result = pending.popleft()
            yield done, result.get()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


def _chunks(pairs, size: int) -> Iterator[list]:
    chunk = []
    for pair in pairs:
        chunk.append(pair)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class _ShardWriter:
    """Records -> ``{split}-NNNNN.array_record.part`` files of ``records_per_shard`` records, renamed to
    ``shard_name`` (which needs the count of shards) by ``close``."""

    def __init__(self, directory: Path, split: str, records_per_shard: int):
        self.directory, self.split, self.records_per_shard = directory, split, records_per_shard
        self.parts: list[tuple[Path, int]] = []
        self.writer = None

    def write(self, record: bytes) -> None:
        if self.writer is None or self.parts[-1][1] == self.records_per_shard:
            self._close_writer()
            from array_record.python.array_record_module import ArrayRecordWriter

            path = self.directory / f"{self.split}-{len(self.parts):05d}.array_record.part"
            self.writer = ArrayRecordWriter(str(path), WRITER_OPTIONS)
            self.parts.append((path, 0))
        self.writer.write(record)
        self.parts[-1] = (self.parts[-1][0], self.parts[-1][1] + 1)

    def _close_writer(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def close(self) -> list[dict[str, Any]]:
        """The shards' manifest entries (``file``, ``records``, ``bytes``), the files renamed."""
        self._close_writer()
        shards = []
        for index, (part, records) in enumerate(self.parts):
            path = self.directory / shard_name(self.split, index, len(self.parts))
            os.replace(part, path)
            shards.append({"file": path.name, "records": records, "bytes": path.stat().st_size})
        return shards


def _write_split(name: str, source: PairSource, directory: Path, encoding: _Encoding, data_config,
                 records_per_shard: int, total: int | None, progress: bool) -> tuple[dict[str, Any], DataReport]:
    """Encode and write one split: its shards, lengths and (``valid``) kept text. Returns its manifest entry and
    its ``DataReport``."""
    report = new_report(data_config, name)
    writer = _ShardWriter(directory, name, records_per_shard)
    lengths = []
    keeps_text = is_valid_split(name) or (is_train_split(name) and data_config.subword_alpha > 0)  # sampled anew
    kept_text = (directory / valid_pairs_name(name)).open("w", encoding="utf-8") if keeps_text else None
    bar = tqdm(total=total, desc=f"preprocess {name}", unit="pair", dynamic_ncols=True, file=sys.stderr,
               disable=None if progress else True)
    try:
        for chunk, (records, chunk_lengths, kept, chunk_report) in encoding.map(_chunks(source, CHUNK_PAIRS), name):
            chunk_report.replaced_lines = sum(replaced for _, _, replaced in chunk)
            report.add(chunk_report)
            for record in records:
                writer.write(record)
            lengths.append(chunk_lengths)
            if kept_text is not None:
                kept_text.writelines(json.dumps([pair[0], pair[1]], ensure_ascii=False) + "\n"
                                      for pair, keep in zip(chunk, kept, strict=True) if keep)
            bar.update(len(chunk))
    finally:
        bar.close()
        if kept_text is not None:
            kept_text.close()
    shards = writer.close()
    all_lengths = np.concatenate(lengths) if lengths else np.zeros((0, 2), dtype=np.int32)
    np.save(directory / lengths_name(name), all_lengths)
    entry = {"records": int(len(all_lengths)), "shards": shards, "lengths": lengths_name(name)}
    return entry, report


def _check_output(out: Path) -> None:
    """``out`` must be new (or an empty directory): a finished corpus is never overwritten, and a directory
    without a manifest is not a corpus to complete."""
    if (out / MANIFEST_FILE).is_file():
        raise DataError(f"{out} already holds a preprocessed corpus; preprocess into a new --out (or remove {out})")
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} exists and is not a directory")
    if is_nonempty_dir(out):
        raise DataError(f"{out} is not empty and holds no {MANIFEST_FILE} (not a finished corpus); remove it or "
                        "choose another --out")


def given_models(data_config) -> set[str]:
    """The sides (``src``, ``tgt``) that get a user's sentencepiece model; ``joint_vocab`` shares one."""
    sides = {side for side, path in zip(SIDE_NAMES, (data_config.src_spm_model, data_config.tgt_spm_model),
                                        strict=True) if path}
    return set(SIDE_NAMES) if sides and data_config.joint_vocab else sides


def adopted_tokenizers(data_config) -> tuple:
    """The (src, tgt) tokenizers of the user's sentencepiece models, None for a side without one."""
    sides = given_models(data_config)
    if not sides:
        return None, None
    from seq2seq_jax.training.adopted_tokenizer import adopt_sentencepiece_model

    paths = (data_config.src_spm_model, data_config.tgt_spm_model)
    shared = next(path for path in paths if path) if data_config.joint_vocab else None
    return tuple(adopt_sentencepiece_model(shared or path) if side in sides else None
                 for side, path in zip(SIDE_NAMES, paths, strict=True))


def preprocess(config, out: str | Path, workers: int = 1, tokenizer_dir: str | Path | None = None,
               records_per_shard: int = RECORDS_PER_SHARD, progress: bool = True) -> Corpus:
    """Write the corpus of ``config.data`` (files, or the built-in task) to ``out`` and return it opened.

    ``tokenizer_dir``: reuse these tokenizers (a workdir's ``tokenizer/``) instead of training new ones.
    ``workers``: tokenizing processes (1: this one). Raises ``DataError`` for bad input (naming the file and
    line) and for an ``out`` that exists and is not empty.
    """
    from seq2seq_jax.training.workdir import (
        Workdir,  # brings JAX: imported here, not where the workers import this module
    )

    if workers < 1 or records_per_shard < 1:
        raise ValueError(f"workers and records_per_shard must be positive, got {workers} and {records_per_shard}")
    out = Path(out)
    data_config = config.data
    _check_output(out)
    sources = pair_sources(data_config)
    described = {name: source.describe() for name, source in sources.items()}
    with staged_directory(out) as staging:
        layout = Workdir(staging)
        total = None
        if tokenizer_dir is not None:
            src_tok, tgt_tok = load_tokenizers(tokenizer_dir)
            src_tok.save(layout.tokenizer_dir, "src")
            tgt_tok.save(layout.tokenizer_dir, "tgt")
            logger.info(f"tokenizers: reused from {tokenizer_dir}")
        elif given_models(data_config) == set(SIDE_NAMES):
            src_tok, tgt_tok = adopted_tokenizers(data_config)
            src_tok.save(layout.tokenizer_dir, "src")
            tgt_tok.save(layout.tokenizer_dir, "tgt")
            logger.info(f"tokenizers: the sentencepiece models {data_config.src_spm_model or data_config.tgt_spm_model}"
                        + ("" if data_config.joint_vocab else f" and {data_config.tgt_spm_model}"))
        else:
            train_pairs = itertools.chain.from_iterable(source for name, source in sources.items()
                                                        if is_train_split(name))
            sample, total = reservoir_sample(
                tqdm(train_pairs, desc="sample train", unit="pair", dynamic_ncols=True, file=sys.stderr,
                     disable=None if progress else True), data_config.tokenizer_sample_size)
            src_tok, tgt_tok = build_tokenizers(data_config, [s for s, _ in sample], [t for _, t in sample],
                                                layout.tokenizer_dir)
            given = adopted_tokenizers(data_config)  # one side's own model, the other side trained
            for side, tokenizer in zip(SIDE_NAMES, given, strict=True):
                if tokenizer is not None:
                    tokenizer.save(layout.tokenizer_dir, side)
            src_tok, tgt_tok = (ours if theirs is None else theirs for ours, theirs in zip((src_tok, tgt_tok), given,
                                                                                         strict=True))
            logger.info(f"tokenizers: trained on {len(sample)} of {total} training pairs")
        config = config.with_vocab_sizes(src_tok.vocab_size, tgt_tok.vocab_size)
        config.save(layout.config_path)
        encoding = _Encoding(ChunkEncoder(src_tok, tgt_tok, data_config), layout.tokenizer_dir, data_config,
                             workers)
        splits, reports = {}, {}
        try:
            for name, source in sources.items():
                splits[name], reports[name] = _write_split(name, source, staging, encoding, data_config,
                                                           records_per_shard, total if name == "train" else None,
                                                           progress)
                logger.info(reports[name].summary())
        finally:
            encoding.close()
        (staging / REPORT_FILE).write_text(
            json.dumps({name: report.to_dict() for name, report in reports.items()}, indent=1) + "\n",
            encoding="utf-8")
        manifest = {"format_version": FORMAT_VERSION, "splits": splits, "sources": described,
                    "data_config": record_settings(data_config)}
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return open_corpus(out)


def corpus_mismatch(corpus: Corpus, data_config, sources: bool = True) -> str | None:
    """Why ``corpus`` was not made from ``data_config`` (None when it was): the data settings that differ, and
    with ``sources`` the source files whose path or size differs. A setting the manifest lacks (a corpus made
    before the setting existed) was made with the setting's default."""
    made_with = {**record_settings(type(data_config)()), **corpus.manifest["data_config"]}
    wanted = record_settings(data_config)
    differences = [f"data.{key}={wanted.get(key)!r} here, {made_with.get(key)!r} in the corpus"
                   for key in sorted(set(made_with) | set(wanted)) if made_with.get(key) != wanted.get(key)]
    if sources and not differences:
        described = {name: source.describe() for name, source in pair_sources(data_config).items()}
        if described != corpus.manifest["sources"]:
            differences.append(f"the source files differ (here {json.dumps(described)}, in the corpus "
                               f"{json.dumps(corpus.manifest['sources'])})")
    return "; ".join(differences) or None


__all__ = ["preprocess", "pair_sources", "PairSource", "reservoir_sample", "corpus_mismatch", "ChunkEncoder"]
