"""A tiny experiment for tests that train (the dates task at a few hundred pairs, a model of width 8-16) and
the per-step losses a run logged."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

from seq2seq_jax.core.config import ExperimentConfig

TINY = [
    "model.src_embed_size=8", "model.tgt_embed_size=8", "model.enc_hidden_size=8", "model.dec_hidden_size=16",
    "model.attention_size=8", "model.readout_size=8", "model.embed_dropout=0.1", "model.readout_dropout=0.1",
    "data.task_train_size=200", "data.task_valid_size=20", "data.batch_size=16", "data.bucket_width=16",
    "train.log_every=1", "train.eval_every=1000", "train.save_every=4", "train.valid_sample_size=4",
    "train.warmup_steps=2",
]


def tiny_config(*overrides: str) -> ExperimentConfig:
    return ExperimentConfig().with_overrides(TINY + list(overrides))


def step_losses(workdir: Path) -> dict[int, float]:
    """Per-step training loss from metrics.jsonl (the last record wins when steps were run twice)."""
    losses = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "train_loss" in record:
            losses[record["step"]] = record["train_loss"]
    return losses


class _Collect(logging.Handler):
    def __init__(self, messages: list[str]):
        super().__init__(logging.DEBUG)
        self.messages = messages

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def captured_log(name: str = "seq2seq_jax"):
    """The messages logged under ``name`` at INFO and above within the block, as a list filled in as they come."""
    messages: list[str] = []
    handler, logger = _Collect(messages), logging.getLogger(name)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
