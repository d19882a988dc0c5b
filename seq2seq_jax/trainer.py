"""The training loop: data and tokenizers, resume, jitted steps, validation, early stopping, the NaN guard,
checkpoints, SIGTERM, and metrics to JSONL, TensorBoard and a progress bar.

Resuming is exact: the checkpoint holds parameters, optimizer state, step, the base RNG key and the data
iterator's position, and dropout draws ``fold_in(rng, step)``; on CPU the per-step losses after a restore
are bit-identical to those of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from seq2seq_jax import data as data_lib
from seq2seq_jax.config import ExperimentConfig
from seq2seq_jax.metrics import corpus_bleu, exact_match, perplexity
from seq2seq_jax.tasks import task_splits
from seq2seq_jax.tokenizer import build_tokenizers, load_tokenizers
from seq2seq_jax.train import make_eval_step, make_optimizer, make_train_step
from seq2seq_jax.translate import Translator
from seq2seq_jax.workdir import Workdir, fresh_train_state


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


def prepare_run(config: ExperimentConfig, run: Workdir, log=print):
    """Resolve the config against the workdir: tokenizers (built once, then reused), vocabulary sizes,
    and ``config.json``. Returns ``(config, src_tokenizer, tgt_tokenizer, train_pairs, valid_pairs)``."""
    run.path.mkdir(parents=True, exist_ok=True)
    train_pairs, valid_pairs = load_pairs(config)
    if (run.tokenizer_dir / "src.tokenizer.json").is_file():
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
    config.save(run.config_path)
    log(f"vocabulary: source {src_tok.vocab_size} ({src_tok.kind}), target {tgt_tok.vocab_size} ({tgt_tok.kind})")
    return config, src_tok, tgt_tok, train_pairs, valid_pairs


def train(config: ExperimentConfig, workdir: str | Path, log=print) -> dict[str, float]:
    """Train (or resume) in ``workdir``; returns the last validation metrics (empty without validation)."""
    run = Workdir(Path(workdir))
    config, src_tok, tgt_tok, train_pairs, valid_pairs = prepare_run(config, run, log)
    train_cfg, data_cfg = config.train, config.data
    train_examples, report = data_lib.encode_pairs(train_pairs, src_tok, tgt_tok, data_cfg, name="train")
    log(report.summary())
    valid_examples, valid_report = (data_lib.encode_pairs(valid_pairs, src_tok, tgt_tok, data_cfg, name="valid")
                                    if valid_pairs else ([], None))
    if valid_report is not None:
        log(valid_report.summary())
    kept_valid_pairs = [valid_pairs[i] for i in valid_report.kept_indices] if valid_report else []

    iterator = data_lib.BatchIterator(train_examples, data_cfg.batch_size, data_cfg.bucket_width, data_cfg.seed)
    shapes = iterator.padded_shapes()
    log(f"batches: {iterator.batches_per_epoch} per epoch of {data_cfg.batch_size} rows; "
        f"{len(shapes)} padded shapes, so at most {len(shapes)} compiled train programs")

    graphdef, state = fresh_train_state(config)
    optimizer = make_optimizer(train_cfg)
    checkpoints = run.checkpointer(config)
    best = {"value": None, "step": None, "bad_evals": 0}
    if checkpoints.latest_step() is not None:
        step, state, extra = checkpoints.restore(None, target=state)
        if "data_state" in extra:  # absent in a checkpoint made by import-torch: the data starts afresh
            iterator.restore(extra["data_state"])
        best = extra.get("best", best)
        log(f"resumed from step {step} in {run.path}")
    train_step = jax.jit(make_train_step(graphdef, optimizer, train_cfg.label_smoothing), donate_argnums=0)
    eval_step = jax.jit(make_eval_step(graphdef))
    translator = Translator(graphdef, state.params, src_tok, tgt_tok, config.decode, data_cfg.bucket_width)
    metrics_log = MetricsLog(run)

    def validate(step: int) -> dict[str, float]:
        loss_sum = tokens = 0.0
        for batch in data_lib.eval_batches(valid_examples, data_cfg.batch_size, data_cfg.bucket_width):
            batch_sum, batch_tokens = eval_step(state.params, _batch_arrays(batch))
            loss_sum += float(batch_sum)
            tokens += float(batch_tokens)
        sample = kept_valid_pairs[: train_cfg.valid_sample_size]
        translator.params = state.params
        hyps = translator.translate_best([src for src, _ in sample])
        refs = [tgt for _, tgt in sample]
        bleu, _ = corpus_bleu(hyps, refs)
        result = {"valid_loss": loss_sum / max(tokens, 1.0), "valid_ppl": perplexity(loss_sum, tokens),
                  "valid_bleu": bleu, "valid_exact_match": exact_match(hyps, refs)}
        for (src, ref), hyp in list(zip(sample, hyps))[:3]:
            log(f"  src: {src}\n  ref: {ref}\n  hyp: {hyp}")
        return result

    def save(step: int, metrics: dict[str, float] | None) -> None:
        extra = {"data_state": iterator.state(), "best": best, "config": config.to_dict()}
        checkpoints.save(step, state, extra=extra, metrics=metrics, force=True)

    step = int(state.step)
    last_metrics: dict[str, float] = {}
    window = {"loss_sum": 0.0, "tokens": 0.0, "grad_norm": 0.0, "steps": 0, "start": time.perf_counter()}
    seen_shapes: set[tuple[int, int]] = set()
    consecutive_nonfinite = 0
    stop_reason = "max_steps"
    progress = tqdm(total=train_cfg.max_steps, initial=step, desc="train", unit="step", dynamic_ncols=True,
                    file=sys.stderr, disable=None)
    with _SigtermFlag() as sigterm:
        while step < train_cfg.max_steps:
            if sigterm.raised:
                stop_reason = "SIGTERM"
                break
            batch = next(iterator)
            seen_shapes.add(batch.src.shape[1:] + batch.tgt_in.shape[1:])
            state, metrics = train_step(state, _batch_arrays(batch))
            step += 1
            metrics = jax.device_get(metrics)
            if not int(metrics["finite"]):
                consecutive_nonfinite += 1
                log(f"step {step}: non-finite loss or gradient, update skipped "
                    f"({consecutive_nonfinite} in a row, limit {train_cfg.max_nonfinite_steps})")
                if consecutive_nonfinite >= train_cfg.max_nonfinite_steps:
                    checkpoints.wait_until_finished()
                    checkpoints.close()
                    metrics_log.close()
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
                metrics_log.write(record)
                progress.set_postfix(loss=f"{record['train_loss']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
                window = {"loss_sum": 0.0, "tokens": 0.0, "grad_norm": 0.0, "steps": 0,
                          "start": time.perf_counter()}
            evaluate_now = valid_examples and (step % train_cfg.eval_every == 0 or step == train_cfg.max_steps)
            if evaluate_now:
                last_metrics = validate(step)
                metrics_log.write({"step": step, **last_metrics})
                value = last_metrics[train_cfg.best_metric]
                improved = best["value"] is None or (
                    value < best["value"] if train_cfg.best_mode == "min" else value > best["value"])
                if improved:
                    best.update(value=value, step=step, bad_evals=0)
                else:
                    best["bad_evals"] += 1
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
    checkpoints.wait_until_finished()
    checkpoints.close()
    metrics_log.close()
    log(f"stopped at step {step} ({stop_reason}); compiled train programs: {len(seen_shapes)}; "
        f"search programs: {translator.compiled_programs}; best {train_cfg.best_metric}: {best['value']} "
        f"at step {best['step']}")
    return last_metrics

