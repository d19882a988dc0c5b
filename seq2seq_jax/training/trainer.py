"""The training loop: data and tokenizers, resume, jitted steps, validation, early stopping, the NaN guard,
checkpoints, SIGTERM, and metrics to JSONL, TensorBoard and a progress bar.

Resuming is exact: the checkpoint holds parameters, optimizer state, step, the base RNG key and the data
iterator's position, and dropout draws ``fold_in(rng, step)``; on CPU the per-step losses after a restore
are bit-identical to those of an uninterrupted run.

The same loop runs on one device, many, or many hosts (``seq2seq_jax.training.parallel``): the state is placed on a
``(data, model)`` mesh, each global batch is split along ``data`` (every process builds the same batch plan
and hands over only its own rows), and the steps are jitted with those shardings. Process 0 alone writes
the corpus (``W/data``, unless ``data.preprocessed_dir`` names one), ``config.json``, the tokenizers, metrics
and the progress bar; every process takes part in checkpointing (orbax writes collectively) and decides to
stop (SIGTERM, early stopping, the NaN guard) together.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh
from tqdm import tqdm

from seq2seq_jax.core.batching import BatchPolicy, LocalRows, batch_shapes, eval_batches
from seq2seq_jax.core.config import ExperimentConfig
from seq2seq_jax.core.reading import DataError
from seq2seq_jax.core.tokenizer import SIDE_NAMES, Tokenizer, load_tokenizers, same_tokenizer
from seq2seq_jax.decoding.metrics import corpus_bleu, exact_match, perplexity
from seq2seq_jax.decoding.translate import Translator
from seq2seq_jax.training import parallel
from seq2seq_jax.training.batch_iterator import BatchIterator
from seq2seq_jax.training.checkpoint import CheckpointError
from seq2seq_jax.training.corpus import Corpus, open_corpus
from seq2seq_jax.training.preprocess import corpus_mismatch, preprocess
from seq2seq_jax.training.steps import make_eval_step, make_grad_accumulation, make_optimizer, make_train_step
from seq2seq_jax.training.workdir import Workdir, fresh_train_state
from seq2seq_jax.training.workdir_lock import workdir_lock

# Training batches are built by one background thread while the device runs the step, up to 4 reads ahead
# (each the examples of a run of batches, about data.READ_SIZE).
READ_THREADS, PREFETCH_READS = 1, 4


class TrainingAborted(RuntimeError):
    """Training cannot go on (e.g. too many non-finite steps in a row)."""


class MetricsLog:
    """Append-only JSONL plus TensorBoard scalars (one writer per run); ``run=None`` writes nothing (the
    processes other than process 0)."""

    def __init__(self, run: Workdir | None):
        from tensorboardX import SummaryWriter

        self.path = None if run is None else run.metrics_path
        self.writer = None if run is None else SummaryWriter(str(run.tensorboard_dir))

    def write(self, record: dict[str, Any]) -> None:
        if self.writer is None:
            return
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, record["step"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class _SigtermFlag:
    """Turns SIGTERM into a flag the loop checks between steps (it then saves and exits 0)."""

    def __init__(self):
        self.raised = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: no signal handling
            self._previous = None
        return self

    def _handle(self, signum, frame):
        self.raised = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def corpus_directory(config: ExperimentConfig, run: Workdir) -> Path:
    """Where the run's preprocessed corpus is: ``data.preprocessed_dir`` (``train --data``), else ``W/data``."""
    return Path(config.data.preprocessed_dir) if config.data.preprocessed_dir else run.path / "data"


def prepare_corpus(config: ExperimentConfig, run: Workdir, log=print) -> Corpus:
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
        log(f"data: {directory}")
        return corpus
    if not directory.is_dir() or not any(directory.iterdir()):
        has_tokenizers = (run.tokenizer_dir / "src.tokenizer.json").is_file()
        corpus = preprocess(config, directory, tokenizer_dir=run.tokenizer_dir if has_tokenizers else None,
                            log=_quiet)
        log(f"data: preprocessed into {directory}" + (f" with the tokenizers of {run.tokenizer_dir}"
                                                      if has_tokenizers else ""))
        return corpus
    corpus = open_corpus(directory)
    mismatch = corpus_mismatch(corpus, config.data)
    if mismatch:
        raise DataError(f"{directory} holds the corpus this workdir was trained on, and this run's data "
                                 f"differs: {mismatch}; use a new --workdir for other data")
    log(f"data: {directory} (preprocessed before)")
    return corpus


def prepare_run(config: ExperimentConfig, run: Workdir, corpus: Corpus, log=print, write: bool = True):
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
    log(f"vocabulary: source {src_tok.vocab_size} ({src_tok.kind}), target {tgt_tok.vocab_size} ({tgt_tok.kind})")
    return config, src_tok, tgt_tok


def _quiet(*_args, **_kwargs) -> None:
    pass


def _due(step: int, every: int, last_step: int) -> bool:
    """Whether an action that runs every ``every`` steps, and at the last step, runs at ``step``."""
    return step % every == 0 or step == last_step


@dataclasses.dataclass
class MetricsWindow:
    """The training metrics summed since the last log record, and the time it started."""

    loss_sum: float = 0.0
    tokens: float = 0.0
    grad_norm: float = 0.0
    steps: int = 0
    start: float = dataclasses.field(default_factory=time.perf_counter)

    def add(self, metrics: dict[str, Any]) -> None:
        """Add one finite step's ``train_step`` metrics (fetched to the host)."""
        self.loss_sum += float(metrics["loss_sum"])
        self.tokens += float(metrics["tokens"])
        self.grad_norm += float(metrics["grad_norm"])
        self.steps += 1

    def record(self, step: int) -> dict[str, Any]:
        """The log record of the window: loss and perplexity per token, mean gradient norm, tokens/s."""
        elapsed = time.perf_counter() - self.start
        return {"step": step, "train_loss": self.loss_sum / max(self.tokens, 1.0),
                "train_ppl": perplexity(self.loss_sum, self.tokens),
                "grad_norm": self.grad_norm / max(self.steps, 1), "tokens_per_s": self.tokens / max(elapsed, 1e-9)}


@dataclasses.dataclass
class EarlyStopping:
    """The best validation value so far, its step, and the validations since it last improved.

    ``patience`` validations in a row without improvement stop training (0: never). ``state()`` is what a
    checkpoint keeps as ``extra["best"]`` (``{"value", "step", "bad_evals"}``), ``restore`` reads it back.
    """

    mode: str  # "min" or "max": the direction of improvement
    patience: int
    value: float | None = None
    step: int | None = None
    bad_evals: int = 0

    def update(self, value: float, step: int) -> bool:
        """Record a validation; returns whether it is the best so far."""
        improved = self.value is None or (value < self.value if self.mode == "min" else value > self.value)
        if improved:
            self.value, self.step, self.bad_evals = value, step, 0
        else:
            self.bad_evals += 1
        return improved

    @property
    def should_stop(self) -> bool:
        return bool(self.patience) and self.bad_evals >= self.patience

    def state(self) -> dict[str, Any]:
        return {"value": self.value, "step": self.step, "bad_evals": self.bad_evals}

    def restore(self, saved: dict[str, Any]) -> None:
        self.value, self.step, self.bad_evals = saved["value"], saved["step"], saved["bad_evals"]


class NonFiniteGuard:
    """Skips steps whose loss or gradient is not finite (``train_step`` leaves the state unchanged) and
    aborts training after ``limit`` of them in a row."""

    def __init__(self, limit: int, log):
        self.limit = limit
        self.log = log
        self.in_a_row = 0

    def accept(self, metrics: dict[str, Any], step: int) -> bool:
        """Whether ``step`` was finite; raises TrainingAborted at the limit of non-finite steps."""
        if int(metrics["finite"]):
            self.in_a_row = 0
            return True
        self.in_a_row += 1
        self.log(f"step {step}: non-finite loss or gradient, update skipped "
                 f"({self.in_a_row} in a row, limit {self.limit})")
        if self.in_a_row >= self.limit:
            raise TrainingAborted(
                f"{self.in_a_row} non-finite steps in a row (train.max_nonfinite_steps={self.limit}); stopped at "
                f"step {step} without saving it. Lower train.learning_rate or check the data; the last good "
                "checkpoint is kept.")
        return False


class Validation:
    """Validation loss and perplexity over the whole validation set; BLEU and exact match of the greedy (or
    configured) decoding of its first ``train.valid_sample_size`` pairs, three of them logged."""

    def __init__(self, eval_step, examples, pairs: list[tuple[str, str]], translator: Translator,
                 config: ExperimentConfig, policy: BatchPolicy, mesh: Mesh, log):
        self.eval_step, self.examples, self.translator = eval_step, examples, translator
        self.policy, self.mesh, self.log = policy, mesh, log
        self.sample = pairs[: config.train.valid_sample_size]
        self.batch_sharding = parallel.batch_sharding(mesh)
        self.local_rows = functools.partial(parallel.process_rows, self.batch_sharding)

    def __call__(self, params) -> dict[str, float]:
        loss_sum = tokens = 0.0
        for batch in eval_batches(self.examples, self.policy, local_rows=self.local_rows):
            batch_sum, batch_tokens = self.eval_step(params, parallel.shard_batch(batch.arrays(), self.batch_sharding,
                                                                                  batch.global_rows))
            loss_sum += float(batch_sum)
            tokens += float(batch_tokens)
        # Every process decodes the whole sample on one of its own devices (the same numbers everywhere, so
        # that early stopping and the best checkpoint are decided alike); one device needs no copy.
        self.translator.params = params if self.mesh.size == 1 else parallel.local_copy(params)
        hyps = self.translator.translate_best([src for src, _ in self.sample])
        refs = [tgt for _, tgt in self.sample]
        bleu, _ = corpus_bleu(hyps, refs)
        result = {"valid_loss": loss_sum / max(tokens, 1.0), "valid_ppl": perplexity(loss_sum, tokens),
                  "valid_bleu": bleu, "valid_exact_match": exact_match(hyps, refs)}
        for (src, ref), hyp in list(zip(self.sample, hyps, strict=True))[:3]:
            self.log(f"  src: {src}\n  ref: {ref}\n  hyp: {hyp}")
        return result


class TrainingCheckpoints:
    """The workdir's checkpoints, each with what resuming needs beside the train state: the data iterator's
    position, the early-stopping record and the config (``extra``)."""

    def __init__(self, checkpointer, iterator: BatchIterator, early_stopping: EarlyStopping,
                 config: ExperimentConfig):
        self.checkpointer, self.iterator, self.early_stopping, self.config = (checkpointer, iterator,
                                                                              early_stopping, config)

    def restore(self, target) -> tuple[int, Any] | None:
        """``(step, state)`` of the latest checkpoint, the iterator and early stopping set back; None if none."""
        if self.checkpointer.latest_step() is None:
            return None
        step, state, extra = self.checkpointer.restore(None, target=target)
        if "data_state" in extra:  # absent in a checkpoint made by import-torch: the data starts afresh
            self.iterator.restore(extra["data_state"])
        if "best" in extra:
            self.early_stopping.restore(extra["best"])
        return step, state

    def save(self, step: int, state, metrics: dict[str, float] | None = None) -> None:
        extra = {"data_state": self.iterator.state(), "best": self.early_stopping.state(),
                 "config": self.config.to_dict()}
        self.checkpointer.save(step, state, extra=extra, metrics=metrics, force=True)

    def latest_step(self) -> int | None:
        return self.checkpointer.latest_step()

    def close(self) -> None:
        self.checkpointer.wait_until_finished()
        self.checkpointer.close()


class TrainingData(NamedTuple):
    """What ``_prepare_data`` reads and encodes for a run."""

    config: ExperimentConfig          # with the vocabulary sizes of the tokenizers
    src_tokenizer: Tokenizer
    tgt_tokenizer: Tokenizer
    iterator: BatchIterator  # the training batches
    valid_examples: Sequence          # encoded validation pairs (a CorpusSplit, or [] without validation)
    valid_pairs: list[tuple[str, str]]  # the text of those that were kept


@contextlib.contextmanager
def _closed_on_abort(checkpoints: TrainingCheckpoints, metrics_log: MetricsLog, progress: tqdm):
    """Close the progress bar, the metrics log and the checkpoints when training stops on an error: too many
    non-finite steps (TrainingAborted; pending checkpoints are finished first) or a checkpoint that could not be
    saved (CheckpointError, e.g. a full disk; that error is the one reported)."""
    try:
        yield
    except TrainingAborted:
        progress.close()
        checkpoints.close()
        metrics_log.close()
        raise
    except CheckpointError:
        progress.close()
        metrics_log.close()
        with contextlib.suppress(Exception):
            checkpoints.close()
        raise


def _prepare_data(config: ExperimentConfig, run: Workdir, main_process: bool, log, policy: BatchPolicy,
                  local_rows: LocalRows | None = None) -> TrainingData:
    """Tokenizers, config and encoded data, prepared by process 0 first (it writes the workdir), batched by
    ``policy``. The iterator builds only this process's ``local_rows`` of each global batch (None: all), ahead
    of the step in a grain thread."""
    data_cfg = config.data
    if main_process:
        corpus = prepare_corpus(config, run, log)
        config, src_tok, tgt_tok = prepare_run(config, run, corpus, log)
    parallel.sync_processes("seq2seq_jax: workdir prepared")  # process 0 has written corpus, tokenizers, config
    if not main_process:
        corpus = open_corpus(corpus_directory(config, run))
        config, src_tok, tgt_tok = prepare_run(config, run, corpus, log, write=False)
    reports = corpus.reports()
    for name in corpus.splits:
        log(reports[name].summary())
    train_examples = corpus.split("train")
    valid_examples = corpus.split("valid") if corpus.has_split("valid") else []
    kept_valid_pairs = corpus.valid_pairs()
    iterator = BatchIterator(train_examples, policy, data_cfg.seed, local_rows=local_rows,
                             read_threads=READ_THREADS, prefetch=PREFETCH_READS)
    if data_cfg.max_tokens:
        shapes = iterator.batch_shapes()
        log(f"batches: {iterator.batches_per_epoch} per epoch of at most {data_cfg.max_tokens} padded tokens; "
            f"{len(shapes)} padded shapes (rows x source x target: "
            f"{' '.join('x'.join(map(str, shape)) for shape in sorted(shapes))}), so at most {len(shapes)} "
            "compiled train programs")
        if valid_examples:  # a budget too small for a validation bucket fails now, not at the first validation
            valid_shapes = batch_shapes(valid_examples, policy)
            log(f"validation: {len(valid_shapes)} padded shapes")
    else:
        shapes = iterator.padded_shapes()
        log(f"batches: {iterator.batches_per_epoch} per epoch of {data_cfg.batch_size} rows; "
            f"{len(shapes)} padded shapes, so at most {len(shapes)} compiled train programs")
    return TrainingData(config, src_tok, tgt_tok, iterator, valid_examples, kept_valid_pairs)


def _initial_state(config: ExperimentConfig, run: Workdir, mesh: Mesh, checkpoints: TrainingCheckpoints, log):
    """``(graphdef, train state on the mesh, its shardings)``: the latest checkpoint's state, else a fresh one."""
    graphdef, host_state = fresh_train_state(config)
    shardings = parallel.state_shardings(host_state, mesh)
    restored = checkpoints.restore(parallel.abstract_like(host_state, shardings))
    if restored is None:
        return graphdef, parallel.place(host_state, shardings), shardings
    log(f"resumed from step {restored[0]} in {run.path}")
    return graphdef, restored[1], shardings


class TrainingUpdate:
    """One training step: ``update(state) -> (state, metrics)`` takes ``train.grad_accum_steps`` batches from
    the iterator and applies one update (``train_step``, or with k > 1 the pure functions of
    ``make_grad_accumulation``). ``shapes`` collects the ``(rows, source, target)`` shapes seen, i.e. the
    compiled train programs."""

    def __init__(self, graphdef, config: ExperimentConfig, mesh: Mesh, state_shardings,
                 iterator: BatchIterator):
        train_cfg = config.train
        optimizer = make_optimizer(train_cfg)
        self.iterator, self.accum_steps = iterator, train_cfg.grad_accum_steps
        self.batch_sharding = parallel.batch_sharding(mesh)
        self.shapes: set[tuple[int, int, int]] = set()
        if self.accum_steps == 1:
            self.train_step = parallel.jit_train_step(make_train_step(graphdef, optimizer, train_cfg.label_smoothing),
                                                      mesh, state_shardings)
        else:
            self.zero, self.accumulate, self.apply_update = parallel.jit_grad_accumulation(
                *make_grad_accumulation(graphdef, optimizer, train_cfg.label_smoothing), mesh, state_shardings)
            # Global (replicated) arrays, as a multi-process jit needs: one traced index, no recompiles.
            self.micro_indices = [parallel.place(np.int32(index), parallel.replicated(mesh))
                                  for index in range(self.accum_steps)]

    def _next_batch(self) -> dict[str, jax.Array]:
        batch = next(self.iterator)
        rows = batch.src.shape[0] if batch.global_rows is None else batch.global_rows
        self.shapes.add((rows, *batch.src.shape[1:], *batch.tgt_in.shape[1:]))
        return parallel.shard_batch(batch.arrays(), self.batch_sharding, batch.global_rows)

    def __call__(self, state):
        if self.accum_steps == 1:
            return self.train_step(state, self._next_batch())
        acc = self.zero(state.params)
        for micro_index in self.micro_indices:
            acc = self.accumulate(state, acc, self._next_batch(), micro_index)
        return self.apply_update(state, acc)


def train(config: ExperimentConfig, workdir: str | Path, log=print, mesh: Mesh | None = None) -> dict[str, float]:
    """Train (or resume) in ``workdir`` holding its lock (``workdir_lock``; process 0 takes it for the whole job,
    before anything is written there); another writer of ``workdir`` makes it raise ``WorkdirLockedError`` at
    once. Returns the last validation metrics (empty without validation); the arguments are ``_train``'s."""
    if not parallel.is_main_process():
        return _train(config, workdir, log, mesh)
    with workdir_lock(workdir, "seq2seq train"):
        return _train(config, workdir, log, mesh)


def _train(config: ExperimentConfig, workdir: str | Path, log=print, mesh: Mesh | None = None) -> dict[str, float]:
    """Train (or resume) in ``workdir``; returns the last validation metrics (empty without validation).

    ``mesh``: the ``(data, model)`` device mesh (``parallel.make_mesh``); default, every device on the
    ``data`` axis. ``data.batch_size`` is the global batch and must be divisible by the ``data`` axis. In a
    multi-host run (``parallel.initialize_distributed`` called first) every process calls ``train`` with
    the same arguments and a workdir on a filesystem they share; ``log`` is called on process 0 only.
    """
    mesh = parallel.make_mesh() if mesh is None else mesh
    main_process = parallel.is_main_process()
    log = log if main_process else _quiet
    if not config.data.max_tokens:  # a token budget makes rows a multiple of the data axis itself
        parallel.check_batch_size(config.data.batch_size, mesh)
    run = Workdir(Path(workdir))
    policy = BatchPolicy.of(config.data, row_quantum=parallel.data_size(mesh))
    data = _prepare_data(config, run, main_process, log, policy,
                         functools.partial(parallel.process_rows, parallel.batch_sharding(mesh)))
    config, train_cfg = data.config, data.config.train
    rows = (f"at most {config.data.max_tokens} padded tokens per batch" if config.data.max_tokens else
            f"{config.data.batch_size // parallel.data_size(mesh)} rows per device")
    accumulation = (f"; {train_cfg.grad_accum_steps} batches per update" if train_cfg.grad_accum_steps > 1
                    else "")
    log(f"{parallel.describe(mesh)}; {rows}{accumulation}; "
        f"compute {config.model.compute_dtype}, parameters {config.model.param_dtype}")

    early_stopping = EarlyStopping(train_cfg.best_mode, train_cfg.patience)
    checkpoints = TrainingCheckpoints(run.checkpointer(config), data.iterator, early_stopping, config)
    graphdef, state, state_shardings = _initial_state(config, run, mesh, checkpoints, log)
    update = TrainingUpdate(graphdef, config, mesh, state_shardings, data.iterator)
    translator = Translator(graphdef, None, data.src_tokenizer, data.tgt_tokenizer, config.decode,
                            config.data.bucket_width)
    validate = Validation(parallel.jit_eval_step(make_eval_step(graphdef), mesh, state_shardings.params),
                          data.valid_examples, data.valid_pairs, translator, config, policy, mesh, log)
    metrics_log = MetricsLog(run if main_process else None)
    guard = NonFiniteGuard(train_cfg.max_nonfinite_steps, log)

    step = int(state.step)
    last_metrics: dict[str, float] = {}
    window = MetricsWindow()
    stop_reason = "max_steps"
    progress = tqdm(total=train_cfg.max_steps, initial=step, desc="train", unit="step", dynamic_ncols=True,
                    file=sys.stderr, disable=None if main_process else True)
    with _SigtermFlag() as sigterm, _closed_on_abort(checkpoints, metrics_log, progress):
        while step < train_cfg.max_steps:
            if parallel.any_process(sigterm.raised):  # every process stops at the same step
                stop_reason = "SIGTERM"
                break
            state, metrics = update(state)
            step += 1
            metrics = jax.device_get(metrics)
            if not guard.accept(metrics, step):
                continue
            window.add(metrics)
            progress.update(1)
            if _due(step, train_cfg.log_every, train_cfg.max_steps):
                record = {**window.record(step), "compiled_train_programs": len(update.shapes)}
                metrics_log.write(record)
                progress.set_postfix(loss=f"{record['train_loss']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
                window = MetricsWindow()
            if data.valid_examples and _due(step, train_cfg.eval_every, train_cfg.max_steps):
                last_metrics = validate(state.params)
                metrics_log.write({"step": step, **last_metrics})
                improved = early_stopping.update(last_metrics[train_cfg.best_metric], step)
                if main_process:
                    progress.write(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in last_metrics.items())
                                   + (" (best)" if improved else ""))
                checkpoints.save(step, state, last_metrics)
                if early_stopping.should_stop:
                    stop_reason = f"early stopping: no improvement in {train_cfg.patience} validations"
                    break
            elif step % train_cfg.save_every == 0:
                checkpoints.save(step, state)
        progress.close()
        if checkpoints.latest_step() != step:
            checkpoints.save(step, state)
        checkpoints.close()
    data.iterator.close()
    metrics_log.close()
    log(f"stopped at step {step} ({stop_reason}); compiled train programs: {len(update.shapes)}; "
        f"search programs: {translator.compiled_programs}; best {train_cfg.best_metric}: {early_stopping.value} "
        f"at step {early_stopping.step}")
    return last_metrics
