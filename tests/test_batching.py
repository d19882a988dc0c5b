"""Token-budget batches (``data.max_tokens``) and gradient accumulation (``train.grad_accum_steps``): budgets
hold, every example once per epoch, shapes known in advance; k accumulated batches equal one batch of their
rows; a run with both trains, resumes bit-identically after a kill, and runs on two devices as on one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from run_support import TINY, captured_log, step_losses, tiny_config
from test_data import make_examples

from seq2seq_jax.core.batching import BatchPolicy, _make_batch, batch_shapes, eval_batches, padded_shapes, rows_for
from seq2seq_jax.core.config import ModelConfig, TrainConfig
from seq2seq_jax.core.reading import DataError
from seq2seq_jax.core.tokenizer import EOS_ID
from seq2seq_jax.training import trainer as trainer_lib
from seq2seq_jax.training.batch_iterator import BatchIterator
from seq2seq_jax.training.checkpoint import Checkpointer
from seq2seq_jax.training.steps import (
    init_model,
    init_train_state,
    make_grad_accumulation,
    make_optimizer,
    make_train_step,
)

VOCAB = 30  # make_examples draws ids below 30


EXAMPLES = make_examples(300, max_len=40)  # source lengths up to 40 with EOS: several buckets
WIDTHS = (8, 4)


@pytest.mark.parametrize("max_tokens, quantum", [(160, 1), (200, 4), (96, 2)])
def test_token_budget_epochs(max_tokens, quantum):
    iterator = BatchIterator(EXAMPLES, BatchPolicy(64, WIDTHS, max_tokens=max_tokens, row_quantum=quantum), seed=3)
    expected = batch_shapes(EXAMPLES, BatchPolicy(64, WIDTHS, max_tokens, quantum))
    assert iterator.batch_shapes() == expected
    assert padded_shapes(EXAMPLES, BatchPolicy(64, WIDTHS, max_tokens, quantum)) == {shape[1:] for shape in expected}
    for _epoch in range(2):
        seen, shapes = [], set()
        for _ in range(iterator.batches_per_epoch):
            batch = next(iterator)
            rows, src, tgt = batch.src.shape + batch.tgt_in.shape[1:]
            shapes.add((rows, src, tgt))
            assert rows * max(src, tgt) <= max_tokens
            assert rows % quantum == 0 and batch.tgt_out.shape == (rows, tgt)
            real = batch.index >= 0
            seen.extend(batch.index[real].tolist())
            # Padding rows: [EOS], length 1, no target tokens.
            assert (batch.src[~real, 0] == EOS_ID).all() and (batch.src_len[~real] == 1).all()
            assert (batch.tgt_len[~real] == 0).all()
            # One (source bucket, target bucket) per batch: its rows all round up to the batch's shape.
            assert (-(-batch.src_len[real] // WIDTHS[0]) * WIDTHS[0] == src).all()
            assert (-(-batch.tgt_len[real] // WIDTHS[1]) * WIDTHS[1] == tgt).all()
        assert sorted(seen) == list(range(len(EXAMPLES)))  # every example exactly once per epoch
        assert shapes == expected
    # Rows vary with the bucket: short buckets get more of them.
    by_length = sorted(expected, key=lambda shape: max(shape[1:]))
    assert by_length[0][0] > by_length[-1][0]


def test_token_budget_eval_batches_cover_every_example_once():
    batches = list(eval_batches(EXAMPLES, BatchPolicy(64, WIDTHS, max_tokens=128, row_quantum=2)))
    indices = np.concatenate([batch.index for batch in batches])
    assert sorted(indices[indices >= 0].tolist()) == list(range(len(EXAMPLES)))
    shapes = batch_shapes(EXAMPLES, BatchPolicy(64, WIDTHS, 128, 2))
    assert {b.src.shape + b.tgt_in.shape[1:] for b in batches} == shapes
    assert all(b.src.shape[0] * max(b.src.shape[1], b.tgt_in.shape[1]) <= 128 for b in batches)


def test_impossible_budget_names_the_bucket():
    # The longest sentences pad to 40 (sources of width 8, targets of width 4): 4 rows need 160 tokens.
    assert max(max(len(example.src), len(example.tgt) + 1) for example in EXAMPLES) == 40
    with pytest.raises(DataError, match=r"max_tokens=150 cannot hold 4 row\(s\) of the bucket of padded lengths "
                                        r"source \d+, target \d+ \(4 x 40 = 160 tokens\); use max_tokens >= 160 "
                                        r"or a smaller max_src_len/max_tgt_len"):
        BatchIterator(EXAMPLES, BatchPolicy(64, WIDTHS, max_tokens=150, row_quantum=4), seed=0)
    BatchIterator(EXAMPLES, BatchPolicy(64, WIDTHS, max_tokens=160, row_quantum=4), seed=0)  # one row-quantum fits


def test_token_budget_state_restores_and_must_match():
    uninterrupted = BatchIterator(EXAMPLES, BatchPolicy(64, WIDTHS, max_tokens=160, row_quantum=2), seed=1)
    expected = [next(uninterrupted).index for _ in range(uninterrupted.batches_per_epoch + 5)]
    first = BatchIterator(EXAMPLES, BatchPolicy(64, WIDTHS, max_tokens=160, row_quantum=2), seed=1)
    for _ in range(7):
        next(first)
    state = first.state()
    assert state["max_tokens"] == 160 and state["row_quantum"] == 2
    resumed = BatchIterator(EXAMPLES, BatchPolicy(64, WIDTHS, max_tokens=160, row_quantum=2), seed=1)
    resumed.restore(state)
    assert all((next(resumed).index == index).all() for index in expected[7:])
    with pytest.raises(DataError, match="saved max_tokens=160 but this run has max_tokens=200"):
        BatchIterator(EXAMPLES, BatchPolicy(64, WIDTHS, max_tokens=200, row_quantum=2), seed=1).restore(state)
    with pytest.raises(DataError, match="saved row_quantum=2 but this run has row_quantum=4"):
        BatchIterator(EXAMPLES, BatchPolicy(64, WIDTHS, max_tokens=160, row_quantum=4), seed=1).restore(state)
    # A row-batching state (as saved before token budgets) has no max_tokens: it restores as max_tokens=0.
    rows_state = BatchIterator(EXAMPLES, BatchPolicy(64, WIDTHS, row_quantum=4), seed=1).state()
    assert "max_tokens" not in rows_state and "row_quantum" not in rows_state
    BatchIterator(EXAMPLES, BatchPolicy(64, WIDTHS), seed=1).restore(rows_state)
    with pytest.raises(DataError, match="saved max_tokens=0 but this run has max_tokens=160"):
        BatchIterator(EXAMPLES, BatchPolicy(64, WIDTHS, max_tokens=160), seed=1).restore(rows_state)


# ------------------------------------------------------------------------------------- gradient accumulation

def _model(dtype: str):
    config = ModelConfig(src_vocab_size=VOCAB, tgt_vocab_size=VOCAB, src_embed_size=8, tgt_embed_size=8,
                         enc_hidden_size=8, dec_hidden_size=16, attention_size=8, readout_size=8,
                         param_dtype=dtype, compute_dtype=dtype)
    return init_model(config, seed=0)


def _micro_batches():
    """Two micro-batches of one padded shape but different token counts (the second has a padding row)."""
    examples = make_examples(8, seed=5, max_len=12)
    first = _make_batch(examples, np.arange(0, 4), 4, (16, 16)).arrays()
    second = _make_batch(examples, np.arange(4, 7), 4, (16, 16)).arrays()
    assert first["tgt_len"].sum() != second["tgt_len"].sum()
    whole = {key: np.concatenate([first[key], second[key]]) for key in first}
    return [first, second], whole


def _gradient_recorder() -> optax.GradientTransformation:
    """An optimizer that keeps the gradient it was given in its state (and leaves the parameters alone), so a
    test reads the exact gradient an update applied; wrapped as ``make_optimizer`` wraps (the NaN guard)."""

    def update(grads, state, params=None):
        return jax.tree.map(jnp.zeros_like, grads), grads

    return optax.apply_if_finite(optax.GradientTransformation(lambda params: jax.tree.map(jnp.zeros_like, params),
                                                              update), 5)


def _one_update_both_ways(dtype: str):
    """``(gradient, metrics)`` of one ``train_step`` on the concatenated batch and of one accumulated update
    over its two micro-batches."""
    graphdef, params = _model(dtype)
    micro, whole = _micro_batches()
    optimizer = _gradient_recorder()
    state = init_train_state(params, optimizer, seed=0)
    one, one_metrics = jax.jit(make_train_step(graphdef, optimizer, 0.1))(state, whole)
    zero, accumulate, apply_update = (jax.jit(f) for f in make_grad_accumulation(graphdef, optimizer, 0.1))
    acc = zero(state.params)
    for index, batch in enumerate(micro):
        acc = accumulate(state, acc, batch, np.int32(index))
    accumulated, acc_metrics = apply_update(state, acc)
    assert int(accumulated.step) == int(one.step) == 1
    assert float(acc_metrics["tokens"]) == float(one_metrics["tokens"]) == whole["tgt_len"].sum()
    return one.opt_state.inner_state, one_metrics, accumulated.opt_state.inner_state, acc_metrics


def _largest_relative_error(actual, expected) -> float:
    """The largest difference of two gradients, relative to the largest entry of ``expected``."""
    difference = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                     for a, b in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True))
    return difference / max(float(np.abs(np.asarray(b)).max()) for b in jax.tree.leaves(expected))


@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-6), ("float64", 1e-14)])
def test_accumulated_gradient_equals_the_concatenated_batch(dtype, tolerance):
    # Every gradient entry within 1e-6 (float32) or 1e-14 (float64) of the gradient's largest entry (measured:
    # 1.7e-7 and 4e-16), the same relative tolerance on the gradient norm and the loss: the summation orders
    # differ, the mathematics does not.
    with jax.enable_x64(dtype == "float64"):
        one, one_metrics, accumulated, acc_metrics = _one_update_both_ways(dtype)
        assert jax.tree.leaves(one)[0].dtype == jnp.dtype(dtype)
        assert _largest_relative_error(accumulated, one) < tolerance
        np.testing.assert_allclose(acc_metrics["grad_norm"], one_metrics["grad_norm"], rtol=tolerance)
        np.testing.assert_allclose(acc_metrics["loss_sum"], one_metrics["loss_sum"], rtol=tolerance)


def test_non_finite_accumulated_update_is_skipped():
    # The NaN guard works per update: one non-finite micro-batch gradient makes the whole update non-finite,
    # and the project's optimizer (apply_if_finite) leaves parameters and moments as they were.
    graphdef, params = _model("float32")
    optimizer = make_optimizer(TrainConfig())
    state = init_train_state(params, optimizer, seed=0)
    zero, _, apply_update = (jax.jit(f) for f in make_grad_accumulation(graphdef, optimizer, 0.0))
    acc = zero(state.params)
    acc = {"grads": jax.tree.map(lambda grad: grad.at[(0,) * grad.ndim].set(jnp.nan), acc["grads"]),
           "loss_sum": acc["loss_sum"] + 7.0, "tokens": acc["tokens"] + 5.0}
    after, metrics = apply_update(state, acc)
    assert int(metrics["finite"]) == 0 and int(after.step) == 1
    _assert_trees_equal(after.params, state.params)
    _assert_trees_equal(after.opt_state.inner_state, state.opt_state.inner_state)


def _assert_trees_equal(left, right):
    for a, b in zip(jax.tree.leaves(left), jax.tree.leaves(right), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ------------------------------------------------------------------------------------------- the trainer

BOTH = ("data.max_tokens=256", "train.grad_accum_steps=2")


@pytest.fixture(scope="module")
def uninterrupted_both(tmp_path_factory) -> tuple[dict[int, float], list[str]]:
    workdir = tmp_path_factory.mktemp("both")
    with captured_log() as messages:
        trainer_lib.train(tiny_config("train.max_steps=12", *BOTH), workdir)
    return step_losses(workdir), messages


def test_trainer_with_token_budget_and_accumulation_trains(uninterrupted_both):
    losses, messages = uninterrupted_both
    assert sorted(losses) == list(range(1, 13))  # steps count updates, not batches
    assert np.mean([losses[s] for s in (10, 11, 12)]) < np.mean([losses[s] for s in (1, 2, 3)])
    assert any("at most 256 padded tokens" in m and "padded shapes (rows x source x target" in m
               for m in messages)
    assert any("2 batches per update" in m for m in messages)


def test_resume_after_kill_with_token_budget_and_accumulation_is_bit_identical(tmp_path, uninterrupted_both):
    uninterrupted, _ = uninterrupted_both
    workdir = tmp_path / "run"
    trainer_lib.train(tiny_config("train.max_steps=6", *BOTH), workdir)
    # As if killed after step 6 but before its save: only the step-4 checkpoint survives.
    shutil.rmtree(workdir / "checkpoints" / "6")
    with Checkpointer(workdir, keep=3) as checkpoints:
        assert checkpoints.all_steps() == [4]
    trainer_lib.train(tiny_config("train.max_steps=12", *BOTH), workdir)
    resumed = step_losses(workdir)
    for step in range(5, 13):
        assert resumed[step] == uninterrupted[step], step  # bit-identical, not approximately equal


def test_two_devices_train_like_one_with_token_budget_and_accumulation(tmp_path, uninterrupted_both):
    # Rows of every bucket of this budget are even (16 x 16 and 8 x 32), so a data axis of 2 gets the
    # batches one device gets; the accumulator is sharded like the parameters, the batch split in two.
    uninterrupted, _ = uninterrupted_both
    workdir = tmp_path / "run"
    command = [sys.executable, "-m", "seq2seq_jax", "train", "--workdir", str(workdir)]
    for pair in [*TINY, "train.max_steps=4", *BOTH]:
        command += ["--set", pair]
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2".strip()
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600,
                               env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags,
                                    "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "mesh data=2" in completed.stdout + completed.stderr
    losses = step_losses(workdir)
    for step in range(1, 5):
        assert losses[step] == pytest.approx(uninterrupted[step], rel=1e-6), step


def test_a_short_input_decodes_in_the_fewest_power_of_two_rows():
    assert [rows_for(lines, 64) for lines in (0, 1, 2, 3, 5, 33, 63, 64, 1000)] == [1, 1, 2, 4, 8, 64, 64, 64, 64]
    assert rows_for(5, 6) == 6 and rows_for(7, 6) == 6  # never more than the configured batch
