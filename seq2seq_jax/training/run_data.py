"""A training run's data: its preprocessed corpus, its tokenizers and resolved config, and the batches.

Process 0 prepares the workdir (``W/data`` unless ``data.preprocessed_dir`` names a corpus, the tokenizers,
``config.json``); the other processes of a multi-host run wait for it and only read. A corpus made with
other data settings, or other tokenizers than the workdir's, is refused with the setting that differs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from seq2seq_jax.core.batching import BatchPolicy, LocalRows, batch_shapes
from seq2seq_jax.core.config import ExperimentConfig
from seq2seq_jax.core.corpora import train_split, valid_split
from seq2seq_jax.core.logs import warnings_only
from seq2seq_jax.core.mixing import ConcatSource, Mixture
from seq2seq_jax.core.reading import DataError
from seq2seq_jax.core.subword_sampling import SampledEpochs, SampledPart, SubwordSampling
from seq2seq_jax.core.tokenizer import SIDE_NAMES, Tokenizer, load_tokenizers, same_tokenizer
from seq2seq_jax.training import parallel
from seq2seq_jax.training.batch_iterator import BatchIterator
from seq2seq_jax.training.corpus import Corpus, open_corpus
from seq2seq_jax.training.preprocess import corpus_mismatch, preprocess, split_source_tokenizers
from seq2seq_jax.training.preprocess import logger as preprocess_logger
from seq2seq_jax.training.workdir import Workdir

logger = logging.getLogger(__name__)

# Training batches are built by one background thread while the device runs the step, up to 4 reads ahead
# (each the examples of a run of batches, about batching.READ_SIZE).
READ_THREADS, PREFETCH_READS = 1, 4


def corpus_directory(config: ExperimentConfig, run: Workdir) -> Path:
    """Where the run's preprocessed corpus is: ``data.preprocessed_dir`` (``train --data``), else ``W/data``."""
    return Path(config.data.preprocessed_dir) if config.data.preprocessed_dir else run.path / "data"


def prepare_corpus(config: ExperimentConfig, run: Workdir) -> Corpus:
    """The run's corpus (process 0): ``data.preprocessed_dir``, whose data settings must be this run's; or
    ``W/data``, preprocessed from the configured files or task the first time (with the workdir's tokenizers when
    it has them) and reused when its manifest matches (same source files and sizes, same data settings)."""
    directory = corpus_directory(config, run)
    if config.data.preprocessed_dir:
        corpus = open_corpus(directory)
        mismatch = corpus_mismatch(corpus, config.data, sources=False)
        if mismatch:
            raise DataError(f"{directory}: the corpus was made with other data settings than this run's "
                                     f"({mismatch}); leave them unset with --data, or preprocess again")
        logger.info(f"data: {directory}")
        return corpus
    if not directory.is_dir() or not any(directory.iterdir()):
        has_tokenizers = (run.tokenizer_dir / "src.tokenizer.json").is_file()
        with warnings_only(preprocess_logger.name):  # its reports are logged once, by prepare_data
            corpus = preprocess(config, directory, tokenizer_dir=run.tokenizer_dir if has_tokenizers else None)
        logger.info(f"data: preprocessed into {directory}" + (f" with the tokenizers of {run.tokenizer_dir}"
                                                      if has_tokenizers else ""))
        return corpus
    corpus = open_corpus(directory)
    mismatch = corpus_mismatch(corpus, config.data)
    if mismatch:
        raise DataError(f"{directory} holds the corpus this workdir was trained on, and this run's data "
                                 f"differs: {mismatch}; use a new --workdir for other data")
    logger.info(f"data: {directory} (preprocessed before)")
    return corpus


def prepare_run(config: ExperimentConfig, run: Workdir, corpus: Corpus, write: bool = True):
    """Resolve the config against the workdir and the corpus: the corpus's tokenizers (copied into the workdir,
    or checked against those it already has), vocabulary sizes, and ``config.json``. Returns ``(config,
    src_tokenizer, tgt_tokenizer)``.

    ``write=False`` (the other processes of a multi-host run, after process 0 has prepared the workdir)
    only reads: ``config.json`` and the tokenizers are not written."""
    if write:
        run.path.mkdir(parents=True, exist_ok=True)
    src_tok, tgt_tok = corpus.tokenizers()
    if (run.tokenizer_dir / "src.tokenizer.json").is_file():
        for side, ours, theirs in zip(SIDE_NAMES, load_tokenizers(run.tokenizer_dir), (src_tok, tgt_tok),
                                      strict=True):
            if not same_tokenizer(ours, theirs):
                raise DataError(
                    f"the {side} tokenizer of {corpus.path} differs from that of {run.tokenizer_dir}: the corpus was "
                    f"made with other tokenizers (seq2seq preprocess --workdir {run.path} reuses this workdir's)")
    elif write:
        src_tok.save(run.tokenizer_dir, "src")
        tgt_tok.save(run.tokenizer_dir, "tgt")
    config = config.with_vocab_sizes(src_tok.vocab_size, tgt_tok.vocab_size)
    if run.exists():
        saved = run.load_config()
        if saved.model != config.model:
            raise ValueError(f"{run.config_path}: the model in this workdir differs from the requested one; "
                             "use a new --workdir (or leave model settings unchanged to resume)")
    if write:
        config.save(run.config_path)
    logger.info(f"vocabulary: source {src_tok.vocab_size} ({src_tok.kind}), "
                f"target {tgt_tok.vocab_size} ({tgt_tok.kind})")
    return config, src_tok, tgt_tok


class ValidSet(NamedTuple):
    """One direction's validation pairs: ``name`` ("" for a run of one corpus), its target language (None
    without tags), the encoded pairs (a CorpusSplit) and the text of those that were kept."""

    name: str
    tgt_lang: str | None
    examples: Sequence
    pairs: list[tuple[str, str]]


class TrainingData(NamedTuple):
    """What ``prepare_data`` reads and encodes for a run."""

    config: ExperimentConfig          # with the vocabulary sizes of the tokenizers
    src_tokenizer: Tokenizer
    tgt_tokenizer: Tokenizer
    iterator: BatchIterator  # the training batches
    valid_sets: list[ValidSet]        # one per corpus with validation pairs ([] without validation)


def _training_source(corpus: Corpus, data_cfg) -> tuple[Sequence, Mixture | None]:
    """The training examples and, with ``data.corpora``, their mixture (its rates logged with each corpus's
    counts)."""
    if not data_cfg.corpora:
        return corpus.split("train"), None
    names = [spec.name for spec in data_cfg.corpora]
    parts = [corpus.split(train_split(name)) for name in names]
    mixture = Mixture(tuple(len(part) for part in parts), data_cfg.sampling_temperature, tuple(names))
    reports = corpus.reports()
    logger.info(f"mixing {len(parts)} corpora at temperature {data_cfg.sampling_temperature}:")
    for line in mixture.describe([reports[train_split(name)].total for name in names]):
        logger.info(f"  {line}")
    return ConcatSource(parts), mixture


def _subword_sampling(corpus: Corpus, data_cfg, src_tok: Tokenizer, tgt_tok: Tokenizer) -> SampledEpochs | None:
    """With ``data.subword_alpha``, the epochs of sampled segmentations of the training splits (their text is
    in the corpus: ``preprocess`` keeps it when sampling is on)."""
    if not data_cfg.subword_alpha:
        return None
    names = [train_split(spec.name) for spec in data_cfg.corpora] or ["train"]
    split_tokenizers = split_source_tokenizers(data_cfg, src_tok)
    parts = [SampledPart(corpus.kept_pairs(name), corpus.split(name), split_tokenizers.get(name, src_tok), tgt_tok)
             for name in names]
    return SampledEpochs(parts, SubwordSampling(data_cfg.subword_alpha, data_cfg.subword_nbest_size),
                         data_cfg.seed, data_cfg.max_src_len, data_cfg.max_tgt_len)


def _valid_sets(corpus: Corpus, data_cfg) -> list[ValidSet]:
    if not data_cfg.corpora:
        return [ValidSet("", None, corpus.split("valid"), corpus.valid_pairs())] if corpus.has_split("valid") else []
    return [ValidSet(spec.name, spec.tgt_lang or None, corpus.split(valid_split(spec.name)),
                     corpus.valid_pairs(valid_split(spec.name)))
            for spec in data_cfg.corpora if corpus.has_split(valid_split(spec.name))]


def prepare_data(config: ExperimentConfig, run: Workdir, main_process: bool, policy: BatchPolicy,
                 local_rows: LocalRows | None = None) -> TrainingData:
    """Tokenizers, config and encoded data, prepared by process 0 first (it writes the workdir), batched by
    ``policy``. The iterator builds only this process's ``local_rows`` of each global batch (None: all), ahead
    of the step in a grain thread."""
    data_cfg = config.data
    if main_process:
        corpus = prepare_corpus(config, run)
        config, src_tok, tgt_tok = prepare_run(config, run, corpus)
    parallel.sync_processes("seq2seq_jax: workdir prepared")  # process 0 has written corpus, tokenizers, config
    if not main_process:
        corpus = open_corpus(corpus_directory(config, run))
        config, src_tok, tgt_tok = prepare_run(config, run, corpus, write=False)
    reports = corpus.reports()
    for name in corpus.splits:
        logger.info(reports[name].summary())
    train_examples, mixture = _training_source(corpus, data_cfg)
    valid_sets = _valid_sets(corpus, data_cfg)
    iterator = BatchIterator(train_examples, policy, data_cfg.seed, local_rows=local_rows,
                             read_threads=READ_THREADS, prefetch=PREFETCH_READS, mixture=mixture,
                             resample=_subword_sampling(corpus, data_cfg, src_tok, tgt_tok))
    if data_cfg.max_tokens:
        shapes = iterator.batch_shapes()
        logger.info(f"batches: {iterator.batches_per_epoch} per epoch of at most {data_cfg.max_tokens} padded tokens; "
            f"{len(shapes)} padded shapes (rows x source x target: "
            f"{' '.join('x'.join(map(str, shape)) for shape in sorted(shapes))}), so at most {len(shapes)} "
            "compiled train programs")
        if valid_sets:  # a budget too small for a validation bucket fails now, not at the first validation
            valid_shapes = set().union(*(batch_shapes(valid.examples, policy) for valid in valid_sets))
            logger.info(f"validation: {len(valid_shapes)} padded shapes")
    else:
        shapes = iterator.padded_shapes()
        logger.info(f"batches: {iterator.batches_per_epoch} per epoch of {data_cfg.batch_size} rows; "
            f"{len(shapes)} padded shapes, so at most {len(shapes)} compiled train programs")
    return TrainingData(config, src_tok, tgt_tok, iterator, valid_sets)
