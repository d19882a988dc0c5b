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
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh
from tqdm import tqdm

from seq2seq_jax.core.batching import BatchPolicy
from seq2seq_jax.core.config import ExperimentConfig
from seq2seq_jax.core.languages import Languages
from seq2seq_jax.core.logs import warnings_only
from seq2seq_jax.decoding.metrics import perplexity
from seq2seq_jax.decoding.translate import Translator
from seq2seq_jax.training import parallel
from seq2seq_jax.training.batch_iterator import BatchIterator
from seq2seq_jax.training.fine_tune import (
    InitFrom,
    check_compatible,
    config_from_source,
    source_params,
    take_tokenizers,
)
from seq2seq_jax.training.run_data import TrainingData, prepare_data
from seq2seq_jax.training.steps import (
    init_train_state,
    make_eval_step,
    make_grad_accumulation,
    make_optimizer,
    make_train_step,
)
from seq2seq_jax.training.validation import Validation
from seq2seq_jax.training.workdir import Workdir, abstract_train_state, fresh_train_state
from seq2seq_jax.training.workdir_lock import workdir_lock

logger = logging.getLogger(__name__)


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

    def __init__(self, limit: int):
        self.limit = limit
        self.in_a_row = 0

    def accept(self, metrics: dict[str, Any], step: int) -> bool:
        """Whether ``step`` was finite; raises TrainingAborted at the limit of non-finite steps."""
        if int(metrics["finite"]):
            self.in_a_row = 0
            return True
        self.in_a_row += 1
        logger.warning(f"step {step}: non-finite loss or gradient, update skipped "
                       f"({self.in_a_row} in a row, limit {self.limit})")
        if self.in_a_row >= self.limit:
            raise TrainingAborted(
                f"{self.in_a_row} non-finite steps in a row (train.max_nonfinite_steps={self.limit}); stopped at "
                f"step {step} without saving it. Lower train.learning_rate or check the data; the last good "
                "checkpoint is kept.")
        return False


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


@contextlib.contextmanager
def _closed_at_end(checkpoints: TrainingCheckpoints, metrics_log: MetricsLog, progress: tqdm,
                   iterator: BatchIterator):
    """Close the progress bar, the checkpoints (pending writes finished), the metrics log and the data iterator
    once, in that order, however training ends. On an error (too many non-finite steps, a checkpoint that
    could not be saved, e.g. a full disk) that error is the one reported: a failure to close the checkpoints
    then is suppressed."""
    failed = True
    try:
        yield
        failed = False
    finally:
        progress.close()
        if failed:
            with contextlib.suppress(Exception):
                checkpoints.close()
        else:
            checkpoints.close()
        metrics_log.close()
        iterator.close()


def _initial_state(config: ExperimentConfig, run: Workdir, mesh: Mesh, checkpoints: TrainingCheckpoints,
                   init_from: InitFrom | None):
    """``(graphdef, train state on the mesh, its shardings, whether it holds another run's parameters)``: the
    latest checkpoint's state; else a fresh one (initialised only then: a resume restores into the state's traced
    shapes), with ``init_from``'s parameters when given."""
    graphdef, abstract = abstract_train_state(config)
    shardings = parallel.state_shardings(abstract, mesh)
    restored = checkpoints.restore(parallel.abstract_like(abstract, shardings))
    if restored is None and init_from is not None:
        step, params = source_params(init_from, config)
        logger.info(f"initialised from step {step} of {init_from.workdir}: its parameters, a fresh optimizer state, "
                    "step 0")
        state = init_train_state(params, make_optimizer(config.train), config.train.seed)
        return graphdef, parallel.place(state, shardings), shardings, True
    if restored is None:
        return graphdef, parallel.place(fresh_train_state(config)[1], shardings), shardings, False
    logger.info(f"resumed from step {restored[0]} in {run.path}")
    return graphdef, restored[1], shardings, False


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
            self.train_step = parallel.jit_train_step(make_train_step(graphdef, optimizer, train_cfg.label_smoothing,
                                                                      train_cfg.coverage_loss_weight),
                                                      mesh, state_shardings)
        else:
            self.zero, self.accumulate, self.apply_update = parallel.jit_grad_accumulation(
                *make_grad_accumulation(graphdef, optimizer, train_cfg.label_smoothing,
                                        train_cfg.coverage_loss_weight), mesh, state_shardings)
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


def train(config: ExperimentConfig, workdir: str | Path, mesh: Mesh | None = None,
          init_from: InitFrom | None = None) -> dict[str, float]:
    """Train (or resume) in ``workdir``; returns the last validation metrics (empty without validation).

    ``mesh``: the ``(data, model)`` device mesh (``parallel.make_mesh``); default, every device on the
    ``data`` axis. ``data.batch_size`` is the global batch and must be divisible by the ``data`` axis. In a
    multi-host run (``parallel.initialize_distributed`` called first) every process calls ``train`` with the
    same arguments and a workdir on a filesystem they share; only process 0 logs below WARNING. Process 0
    holds the workdir's lock (``workdir_lock``) for the whole job, taken before anything is written there:
    another writer of ``workdir`` makes it raise ``WorkdirLockedError`` at once. ``init_from``: start from another
    workdir's parameters and tokenizers (``fine_tune``; until this workdir has a checkpoint of its own); the
    run then validates once before its first step.
    """
    mesh = parallel.make_mesh() if mesh is None else mesh
    main_process = parallel.is_main_process()
    lock = workdir_lock(workdir, "seq2seq train") if main_process else contextlib.nullcontext()
    with lock, warnings_only(enabled=not main_process):
        run = Workdir(Path(workdir))
        if init_from is not None:
            config = config_from_source(init_from, config)
            check_compatible(init_from, config)
            if main_process:
                run.path.mkdir(parents=True, exist_ok=True)
                take_tokenizers(init_from, run)
        return _train(config, run, mesh, main_process, init_from)


class _Run(NamedTuple):
    """What the loop of ``_run_steps`` works with."""

    config: ExperimentConfig
    data: TrainingData
    update: TrainingUpdate
    validate: Validation
    checkpoints: TrainingCheckpoints
    early_stopping: EarlyStopping
    metrics_log: MetricsLog
    main_process: bool
    validate_first: bool  # a fine-tuning run's starting point, on its own validation set


def _train(config: ExperimentConfig, run: Workdir, mesh: Mesh, main_process: bool,
           init_from: InitFrom | None) -> dict[str, float]:
    if not config.data.max_tokens:  # a token budget makes rows a multiple of the data axis itself
        parallel.check_batch_size(config.data.batch_size, mesh)
    policy = BatchPolicy.of(config.data, row_quantum=parallel.data_size(mesh))
    data = prepare_data(config, run, main_process, policy,
                        functools.partial(parallel.process_rows, parallel.batch_sharding(mesh)))
    config, train_cfg = data.config, data.config.train
    rows = (f"at most {config.data.max_tokens} padded tokens per batch" if config.data.max_tokens else
            f"{config.data.batch_size // parallel.data_size(mesh)} rows per device")
    accumulation = (f"; {train_cfg.grad_accum_steps} batches per update" if train_cfg.grad_accum_steps > 1
                    else "")
    logger.info(f"{parallel.describe(mesh)}; {rows}{accumulation}; "
                f"compute {config.model.compute_dtype}, parameters {config.model.param_dtype}")

    early_stopping = EarlyStopping(train_cfg.best_mode, train_cfg.patience)
    checkpoints = TrainingCheckpoints(run.checkpointer(config), data.iterator, early_stopping, config)
    graphdef, state, state_shardings, initialised = _initial_state(config, run, mesh, checkpoints, init_from)
    update = TrainingUpdate(graphdef, config, mesh, state_shardings, data.iterator)
    decode_config = Languages.of(config, run.path).decode_config(config.decode, data.tgt_tokenizer)
    translator = Translator(graphdef, None, data.src_tokenizer, data.tgt_tokenizer, decode_config,
                            config.data.bucket_width)
    validate = Validation(parallel.jit_eval_step(make_eval_step(graphdef), mesh, state_shardings.params),
                          data.valid_sets, translator, config, policy, mesh, str(run.path))
    loop = _Run(config, data, update, validate, checkpoints, early_stopping,
                MetricsLog(run if main_process else None), main_process, initialised)
    step, stop_reason, last_metrics = _run_steps(loop, state)
    logger.info(f"stopped at step {step} ({stop_reason}); compiled train programs: {len(update.shapes)}; "
                f"search programs: {translator.compiled_programs}; best {train_cfg.best_metric}: "
                f"{early_stopping.value} at step {early_stopping.step}")
    return last_metrics


def _run_steps(loop: _Run, state) -> tuple[int, str, dict[str, float]]:
    """Steps until ``train.max_steps``, SIGTERM or early stopping, logging, validating and saving as configured;
    the last step is saved. Returns ``(last step, why it stopped, last validation metrics)``."""
    train_cfg = loop.config.train
    guard = NonFiniteGuard(train_cfg.max_nonfinite_steps)
    step = int(state.step)
    last_metrics: dict[str, float] = {}
    window = MetricsWindow()
    stop_reason = "max_steps"
    progress = tqdm(total=train_cfg.max_steps, initial=step, desc="train", unit="step", dynamic_ncols=True,
                    file=sys.stderr, disable=None if loop.main_process else True)
    with _SigtermFlag() as sigterm, _closed_at_end(loop.checkpoints, loop.metrics_log, progress,
                                                   loop.data.iterator):
        if loop.validate_first and loop.data.valid_sets:
            last_metrics = _validate(loop, step, state, progress)
        while step < train_cfg.max_steps:
            if parallel.any_process(sigterm.raised):  # every process stops at the same step
                stop_reason = "SIGTERM"
                break
            state, metrics = loop.update(state)
            step += 1
            metrics = jax.device_get(metrics)
            if not guard.accept(metrics, step):
                continue
            window.add(metrics)
            progress.update(1)
            if _due(step, train_cfg.log_every, train_cfg.max_steps):
                record = {**window.record(step), "compiled_train_programs": len(loop.update.shapes)}
                loop.metrics_log.write(record)
                progress.set_postfix(loss=f"{record['train_loss']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
                window = MetricsWindow()
            if loop.data.valid_sets and _due(step, train_cfg.eval_every, train_cfg.max_steps):
                last_metrics = _validate(loop, step, state, progress)
                if loop.early_stopping.should_stop:
                    stop_reason = f"early stopping: no improvement in {train_cfg.patience} validations"
                    break
            elif step % train_cfg.save_every == 0:
                loop.checkpoints.save(step, state)
        if loop.checkpoints.latest_step() != step:
            loop.checkpoints.save(step, state)
    return step, stop_reason, last_metrics


def _validate(loop: _Run, step: int, state, progress: tqdm) -> dict[str, float]:
    """Validate ``state`` at ``step``: log and save the metrics with the checkpoint, update early stopping."""
    metrics = loop.validate(state.params)
    loop.metrics_log.write({"step": step, **metrics})
    improved = loop.early_stopping.update(metrics[loop.config.train.best_metric], step)
    if loop.main_process:
        progress.write(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
                       + (" (best)" if improved else ""))
    loop.checkpoints.save(step, state, metrics)
    return metrics
