"""The training loop: data and tokenizers, resume, jitted steps, validation, early stopping, the NaN guard,
checkpoints, SIGTERM, and metrics to JSONL, TensorBoard and a progress bar.

Resuming is exact: the checkpoint holds parameters, optimizer state, step, the base RNG key and the data
iterator's position, and dropout draws ``fold_in(rng, step)``; on CPU the per-step losses after a restore
are bit-identical to those of an uninterrupted run.

The same loop runs on one device, many, or many hosts (``seq2seq_jax.parallel``): the state is placed on a
``(data, model)`` mesh, each global batch is split along ``data`` (every process builds the same batch plan
and hands over only its own rows), and the steps are jitted with those shardings. Process 0 alone writes
``config.json``, the tokenizers, metrics and the progress bar; every process takes part in checkpointing
(orbax writes collectively) and decides to stop (SIGTERM, early stopping, the NaN guard) together.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh
from tqdm import tqdm

from seq2seq_jax import data as data_lib
from seq2seq_jax import parallel
from seq2seq_jax.checkpoint import CheckpointError
from seq2seq_jax.config import ExperimentConfig
from seq2seq_jax.metrics import corpus_bleu, exact_match, perplexity
from seq2seq_jax.tasks import task_splits
from seq2seq_jax.tokenizer import build_tokenizers, load_tokenizers
from seq2seq_jax.train import make_eval_step, make_optimizer, make_train_step
from seq2seq_jax.translate import Translator
from seq2seq_jax.workdir import Workdir, fresh_train_state
from seq2seq_jax.workdir_lock import workdir_lock


class TrainingAborted(RuntimeError):
    """Training cannot go on (e.g. too many non-finite steps in a row)."""


def load_pairs(config: ExperimentConfig):
    """``(train_pairs, valid_pairs)`` from the configured files or built-in task; valid may be empty."""
    data = config.data
    if not data.uses_files:
        return task_splits(data.task, data.task_train_size, data.task_valid_size, data.task_seed)
    if data.train_tsv:
        train = data_lib.read_tsv(data.train_tsv, data.encoding_errors)
    else:
        train = data_lib.read_parallel(data.train_src, data.train_tgt, data.encoding_errors)
    if data.valid_tsv:
        valid = data_lib.read_tsv(data.valid_tsv, data.encoding_errors)
    elif data.valid_src:
        valid = data_lib.read_parallel(data.valid_src, data.valid_tgt, data.encoding_errors)
    else:
        valid = []
    return train, valid


def _batch_arrays(batch: data_lib.Batch) -> dict[str, np.ndarray]:
    return {name: getattr(batch, name) for name in ("src", "src_len", "tgt_in", "tgt_out", "tgt_len")}


class MetricsLog:
    """Append-only JSONL plus TensorBoard scalars (one writer per run)."""

    def __init__(self, run: Workdir):
        from tensorboardX import SummaryWriter

        self.path = run.metrics_path
        self.writer = SummaryWriter(str(run.tensorboard_dir))

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, record["step"])
        self.writer.flush()

    def close(self) -> None:
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


def prepare_run(config: ExperimentConfig, run: Workdir, log=print, write: bool = True):
    """Resolve the config against the workdir: tokenizers (built once, then reused), vocabulary sizes,
    and ``config.json``. Returns ``(config, src_tokenizer, tgt_tokenizer, train_pairs, valid_pairs)``.

    ``write=False`` (the other processes of a multi-host run, after process 0 has prepared the workdir)
    only reads: the tokenizers must exist, and ``config.json`` is not written."""
    if write:
        run.path.mkdir(parents=True, exist_ok=True)
    train_pairs, valid_pairs = load_pairs(config)
    if (run.tokenizer_dir / "src.tokenizer.json").is_file() or not write:
        src_tok, tgt_tok = load_tokenizers(run.tokenizer_dir)
    else:
        src_tok, tgt_tok = build_tokenizers(config.data, [s for s, _ in train_pairs], [t for _, t in train_pairs],
                                            run.tokenizer_dir)
    model = dataclasses.replace(config.model, src_vocab_size=src_tok.vocab_size, tgt_vocab_size=tgt_tok.vocab_size)
    config = dataclasses.replace(config, model=model)
    if run.exists():
        saved = run.load_config()
        if saved.model != config.model:
            raise ValueError(f"{run.config_path}: the model in this workdir differs from the requested one; "
                             "use a new --workdir (or leave model settings unchanged to resume)")
    if write:
        config.save(run.config_path)
    log(f"vocabulary: source {src_tok.vocab_size} ({src_tok.kind}), target {tgt_tok.vocab_size} ({tgt_tok.kind})")
    return config, src_tok, tgt_tok, train_pairs, valid_pairs


def _quiet(*_args, **_kwargs) -> None:
    pass


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
    train_cfg, data_cfg = config.train, config.data
    parallel.check_batch_size(data_cfg.batch_size, mesh)
    run = Workdir(Path(workdir))
    if main_process:
        config, src_tok, tgt_tok, train_pairs, valid_pairs = prepare_run(config, run, log)
    parallel.sync_processes("seq2seq_jax: workdir prepared")  # process 0 has written tokenizers and config
    if not main_process:
        config, src_tok, tgt_tok, train_pairs, valid_pairs = prepare_run(config, run, log, write=False)
    train_examples, report = data_lib.encode_pairs(train_pairs, src_tok, tgt_tok, data_cfg, name="train")
    log(report.summary())
    valid_examples, valid_report = (data_lib.encode_pairs(valid_pairs, src_tok, tgt_tok, data_cfg, name="valid")
                                    if valid_pairs else ([], None))
    if valid_report is not None:
        log(valid_report.summary())
    kept_valid_pairs = [valid_pairs[i] for i in valid_report.kept_indices] if valid_report else []

    iterator = data_lib.BatchIterator(train_examples, data_cfg.batch_size, data_cfg.bucket_widths, data_cfg.seed)
    shapes = iterator.padded_shapes()
    log(f"batches: {iterator.batches_per_epoch} per epoch of {data_cfg.batch_size} rows; "
        f"{len(shapes)} padded shapes, so at most {len(shapes)} compiled train programs")
    log(f"{parallel.describe(mesh)}; {data_cfg.batch_size // parallel.data_size(mesh)} rows per device; "
        f"compute {config.model.compute_dtype}, parameters {config.model.param_dtype}")

    graphdef, host_state = fresh_train_state(config)
    state_shardings = parallel.state_shardings(host_state, mesh)
    param_shardings = state_shardings.params
    batch_sharding = parallel.batch_sharding(mesh)
    optimizer = make_optimizer(train_cfg)
    checkpoints = run.checkpointer(config)
    best = {"value": None, "step": None, "bad_evals": 0}
    if checkpoints.latest_step() is not None:
        step, state, extra = checkpoints.restore(None, target=parallel.abstract_like(host_state, state_shardings))
        if "data_state" in extra:  # absent in a checkpoint made by import-torch: the data starts afresh
            iterator.restore(extra["data_state"])
        best = extra.get("best", best)
        log(f"resumed from step {step} in {run.path}")
    else:
        state = parallel.place(host_state, state_shardings)
    del host_state
    train_step = parallel.jit_train_step(make_train_step(graphdef, optimizer, train_cfg.label_smoothing), mesh,
                                         state_shardings)
    eval_step = parallel.jit_eval_step(make_eval_step(graphdef), mesh, param_shardings)
    translator = Translator(graphdef, None, src_tok, tgt_tok, config.decode, data_cfg.bucket_width)
    metrics_log = MetricsLog(run) if main_process else None

    def write_metrics(record: dict[str, Any]) -> None:
        if metrics_log is not None:
            metrics_log.write(record)

    def close_logs() -> None:
        if metrics_log is not None:
            metrics_log.close()

    def validate(step: int) -> dict[str, float]:
        loss_sum = tokens = 0.0
        for batch in data_lib.eval_batches(valid_examples, data_cfg.batch_size, data_cfg.bucket_widths):
            batch_sum, batch_tokens = eval_step(state.params, parallel.shard_batch(_batch_arrays(batch),
                                                                                  batch_sharding))
            loss_sum += float(batch_sum)
            tokens += float(batch_tokens)
        sample = kept_valid_pairs[: train_cfg.valid_sample_size]
        # Every process decodes the whole sample on one of its own devices (the same numbers everywhere, so
        # that early stopping and the best checkpoint are decided alike); one device needs no copy.
        translator.params = state.params if mesh.size == 1 else parallel.local_copy(state.params)
        hyps = translator.translate_best([src for src, _ in sample])
        refs = [tgt for _, tgt in sample]
        bleu, _ = corpus_bleu(hyps, refs)
        result = {"valid_loss": loss_sum / max(tokens, 1.0), "valid_ppl": perplexity(loss_sum, tokens),
                  "valid_bleu": bleu, "valid_exact_match": exact_match(hyps, refs)}
        for (src, ref), hyp in list(zip(sample, hyps, strict=True))[:3]:
            log(f"  src: {src}\n  ref: {ref}\n  hyp: {hyp}")
        return result

    @contextlib.contextmanager
    def stopping_cleanly_if_a_save_fails():
        """A failed save (a full disk, say) ends the run: progress bar, logs and checkpointer closed first."""
        try:
            yield
        except CheckpointError:
            progress.close()
            close_logs()
            with contextlib.suppress(Exception):  # the save's own error is the one to report
                checkpoints.close()
            raise

    def save(step: int, metrics: dict[str, float] | None) -> None:
        extra = {"data_state": iterator.state(), "best": best, "config": config.to_dict()}
        with stopping_cleanly_if_a_save_fails():
            checkpoints.save(step, state, extra=extra, metrics=metrics, force=True)

    step = int(state.step)
    last_metrics: dict[str, float] = {}
    window = {"loss_sum": 0.0, "tokens": 0.0, "grad_norm": 0.0, "steps": 0, "start": time.perf_counter()}
    seen_shapes: set[tuple[int, int]] = set()
    consecutive_nonfinite = 0
    stop_reason = "max_steps"
    progress = tqdm(total=train_cfg.max_steps, initial=step, desc="train", unit="step", dynamic_ncols=True,
                    file=sys.stderr, disable=None if main_process else True)
    with _SigtermFlag() as sigterm:
        while step < train_cfg.max_steps:
            if parallel.any_process(sigterm.raised):  # every process stops at the same step
                stop_reason = "SIGTERM"
                break
            batch = next(iterator)
            seen_shapes.add(batch.src.shape[1:] + batch.tgt_in.shape[1:])
            state, metrics = train_step(state, parallel.shard_batch(_batch_arrays(batch), batch_sharding))
            step += 1
            metrics = jax.device_get(metrics)
            if not int(metrics["finite"]):
                consecutive_nonfinite += 1
                log(f"step {step}: non-finite loss or gradient, update skipped "
                    f"({consecutive_nonfinite} in a row, limit {train_cfg.max_nonfinite_steps})")
                if consecutive_nonfinite >= train_cfg.max_nonfinite_steps:
                    checkpoints.wait_until_finished()
                    checkpoints.close()
                    close_logs()
                    raise TrainingAborted(
                        f"{consecutive_nonfinite} non-finite steps in a row (train.max_nonfinite_steps="
                        f"{train_cfg.max_nonfinite_steps}); stopped at step {step} without saving it. Lower "
                        "train.learning_rate or check the data; the last good checkpoint is kept.")
                continue
            consecutive_nonfinite = 0
            window["loss_sum"] += float(metrics["loss_sum"])
            window["tokens"] += float(metrics["tokens"])
            window["grad_norm"] += float(metrics["grad_norm"])
            window["steps"] += 1
            progress.update(1)
            if step % train_cfg.log_every == 0 or step == train_cfg.max_steps:
                elapsed = time.perf_counter() - window["start"]
                record = {"step": step, "train_loss": window["loss_sum"] / max(window["tokens"], 1.0),
                          "train_ppl": perplexity(window["loss_sum"], window["tokens"]),
                          "grad_norm": window["grad_norm"] / max(window["steps"], 1),
                          "tokens_per_s": window["tokens"] / max(elapsed, 1e-9),
                          "compiled_train_programs": len(seen_shapes)}
                write_metrics(record)
                progress.set_postfix(loss=f"{record['train_loss']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
                window = {"loss_sum": 0.0, "tokens": 0.0, "grad_norm": 0.0, "steps": 0,
                          "start": time.perf_counter()}
            evaluate_now = valid_examples and (step % train_cfg.eval_every == 0 or step == train_cfg.max_steps)
            if evaluate_now:
                last_metrics = validate(step)
                write_metrics({"step": step, **last_metrics})
                value = last_metrics[train_cfg.best_metric]
                improved = best["value"] is None or (
                    value < best["value"] if train_cfg.best_mode == "min" else value > best["value"])
                if improved:
                    best.update(value=value, step=step, bad_evals=0)
                else:
                    best["bad_evals"] += 1
                if main_process:
                    progress.write(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in last_metrics.items())
                                   + (" (best)" if improved else ""))
                save(step, last_metrics)
                if train_cfg.patience and best["bad_evals"] >= train_cfg.patience:
                    stop_reason = f"early stopping: no improvement in {train_cfg.patience} validations"
                    break
            elif step % train_cfg.save_every == 0:
                save(step, None)
    progress.close()
    if checkpoints.latest_step() != step:
        save(step, None)
    with stopping_cleanly_if_a_save_fails():
        checkpoints.wait_until_finished()
    checkpoints.close()
    close_logs()
    log(f"stopped at step {step} ({stop_reason}); compiled train programs: {len(seen_shapes)}; "
        f"search programs: {translator.compiled_programs}; best {train_cfg.best_metric}: {best['value']} "
        f"at step {best['step']}")
    return last_metrics

