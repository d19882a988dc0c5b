"""The training loop: exact resume after an interruption (a kill between saves, and SIGTERM), the NaN guard,
early stopping, and the refusal to change the model of an existing workdir."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from run_support import TINY, captured_log, step_losses, tiny_config

from seq2seq_jax.core.batching import Batch
from seq2seq_jax.training import trainer as trainer_lib
from seq2seq_jax.training.checkpoint import Checkpointer


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[int, float]:
    workdir = tmp_path_factory.mktemp("uninterrupted")
    trainer_lib.train(tiny_config("train.max_steps=12"), workdir)
    return step_losses(workdir)


def test_resume_after_kill_between_saves_is_bit_identical(tmp_path, uninterrupted):
    workdir = tmp_path / "run"
    trainer_lib.train(tiny_config("train.max_steps=6"), workdir)
    # Simulate SIGKILL after step 6 but before its save: only the step-4 checkpoint survives.
    with Checkpointer(workdir, keep=3) as checkpoints:
        assert checkpoints.all_steps() == [4, 6]
    shutil.rmtree(workdir / "checkpoints" / "6")
    trainer_lib.train(tiny_config("train.max_steps=12"), workdir)
    resumed = step_losses(workdir)
    assert sorted(resumed) == list(range(1, 13))
    for step in range(5, 13):
        assert resumed[step] == uninterrupted[step], step  # bit-identical, not approximately equal


def test_sigterm_saves_exits_zero_and_resumes_exactly(tmp_path, uninterrupted):
    workdir = tmp_path / "run"
    command = [sys.executable, "-m", "seq2seq_jax", "train", "--workdir", str(workdir)]
    for pair in TINY + ["train.max_steps=100000", "train.save_every=100000"]:
        command += ["--set", pair]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "JAX_PLATFORMS": "cpu"})
    deadline = time.time() + 240
    metrics = workdir / "metrics.jsonl"
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output
    assert "SIGTERM" in output
    with Checkpointer(workdir, keep=3) as checkpoints:
        saved_step = checkpoints.latest_step()
    assert saved_step is not None and saved_step >= 3
    trainer_lib.train(tiny_config(f"train.max_steps={min(saved_step + 4, 12)}"), workdir)
    resumed = step_losses(workdir)
    for step in range(saved_step + 1, min(saved_step + 4, 12) + 1):
        assert resumed[step] == uninterrupted[step], step


@pytest.fixture
def poisoned_batches(monkeypatch):
    """Batches whose first ``tgt_len`` is negative make the loss NaN (a stand-in for a numerical blow-up)."""
    poison_steps: set[int] = set()
    counter = {"batches": 0}
    real_arrays = Batch.arrays
    real_loss = trainer_lib.make_train_step.__globals__["sequence_loss"]

    def marking_arrays(batch):
        arrays = real_arrays(batch)
        counter["batches"] += 1
        if counter["batches"] in poison_steps:
            arrays = dict(arrays, tgt_len=np.where(np.arange(len(arrays["tgt_len"])) == 0, -1, arrays["tgt_len"]))
        return arrays

    def nan_loss(logits, targets, tgt_len, label_smoothing=0.0):
        loss_sum, tokens = real_loss(logits, targets, tgt_len, label_smoothing)
        return loss_sum * jnp.where(jnp.any(tgt_len < 0), jnp.nan, 1.0), tokens  # NaN gradients too

    monkeypatch.setattr(Batch, "arrays", marking_arrays)
    monkeypatch.setitem(trainer_lib.make_train_step.__globals__, "sequence_loss", nan_loss)
    return poison_steps


def test_nan_step_is_skipped(tmp_path, poisoned_batches):
    poisoned_batches.update({3})
    with captured_log() as messages:
        trainer_lib.train(tiny_config("train.max_steps=5", "data.task_valid_size=1"), tmp_path / "run")
    assert any("non-finite" in m and "step 3" in m for m in messages)
    with Checkpointer(tmp_path / "run", keep=3) as checkpoints:
        _, state, _ = checkpoints.restore()
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(state))


def test_too_many_nan_steps_abort_without_a_bad_checkpoint(tmp_path, poisoned_batches):
    poisoned_batches.update(range(6, 100))
    with pytest.raises(trainer_lib.TrainingAborted, match="non-finite steps in a row"):
        trainer_lib.train(tiny_config("train.max_steps=20", "train.max_nonfinite_steps=3"), tmp_path / "run")
    with Checkpointer(tmp_path / "run", keep=3) as checkpoints:
        assert checkpoints.all_steps() == [4]


def test_early_stopping(tmp_path):
    # A learning rate this small cannot improve the validation loss by the second evaluation.
    with captured_log() as messages:
        trainer_lib.train(tiny_config("train.max_steps=50", "train.eval_every=2", "train.patience=1",
                                      "train.learning_rate=1e-9", "train.best_metric=valid_exact_match"),
                          tmp_path / "run")
    assert any("early stopping" in m for m in messages)


def test_model_of_existing_workdir_cannot_change(tmp_path):
    trainer_lib.train(tiny_config("train.max_steps=1"), tmp_path / "run")
    with pytest.raises(ValueError, match="model in this workdir differs"):
        trainer_lib.train(tiny_config("train.max_steps=2", "model.enc_hidden_size=12"), tmp_path / "run")
