"""``seq2seq average``: the mean of the parameters of a run's checkpoints, written as a new workdir.

The run is made without training (three differently seeded states saved as checkpoints), so nothing compiles.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from run_support import tiny_config

from seq2seq_jax import cli
from seq2seq_jax.core.config import ExperimentConfig
from seq2seq_jax.core.tokenizer import build_tokenizers
from seq2seq_jax.training.averaging import average_checkpoints, average_params, select_steps
from seq2seq_jax.training.checkpoint import CheckpointError
from seq2seq_jax.training.staging import StagingError
from seq2seq_jax.training.tasks import generate_task
from seq2seq_jax.training.workdir import Workdir, fresh_train_state, load_trained

STEPS = (10, 20, 30)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """``(workdir, {step: params})``: a workdir with checkpoints at ``STEPS``, each a differently seeded model."""
    workdir = Workdir(tmp_path_factory.mktemp("averaging") / "run")
    pairs = generate_task("dates", 50, seed=3)
    base = tiny_config("train.keep_checkpoints=3")
    src_tok, tgt_tok = build_tokenizers(base.data, [s for s, _ in pairs], [t for _, t in pairs], workdir.tokenizer_dir)
    config = base.with_vocab_sizes(src_tok.vocab_size, tgt_tok.vocab_size)
    config.save(workdir.config_path)
    saved = {}
    with workdir.checkpointer(config) as checkpoints:
        for seed, step in enumerate(STEPS):
            seeded = dataclasses.replace(config, train=dataclasses.replace(config.train, seed=seed))
            _, state = fresh_train_state(seeded)
            state = state.replace(step=np.int32(step))
            checkpoints.save(step, state, extra={"data": {"epoch": seed}}, metrics={"valid_loss": 1.0 + seed})
            saved[step] = jax.tree.map(np.asarray, state.params)
    return workdir.path, saved


def _leaves(tree):
    return jax.tree.leaves(jax.tree.map(np.asarray, tree))


def test_average_of_the_last_two_is_their_mean(run, tmp_path):
    workdir, saved = run
    assert average_checkpoints(workdir, tmp_path / "avg", last=2) == [20, 30]
    averaged = load_trained(tmp_path / "avg")
    assert averaged.step == 30
    for got, a, b in zip(_leaves(averaged.params), _leaves(saved[20]), _leaves(saved[30]), strict=True):
        assert got.dtype == a.dtype
        np.testing.assert_allclose(got, (a.astype(np.float64) + b) / 2, rtol=1e-6, atol=1e-7)
    # The average is a different model from either checkpoint (the seeds differ).
    assert not np.allclose(_leaves(averaged.params)[0], _leaves(saved[30])[0])
    assert ExperimentConfig.load(tmp_path / "avg" / "config.json") == ExperimentConfig.load(workdir / "config.json")
    assert sorted(p.name for p in (tmp_path / "avg" / "tokenizer").iterdir()) == \
        sorted(p.name for p in (workdir / "tokenizer").iterdir())


def test_cli_average_named_steps(run, tmp_path, capsys):
    workdir, saved = run
    out = tmp_path / "avg"
    assert cli.main(["average", "--workdir", str(workdir), "--out", str(out), "--steps", "10,30"]) == 0
    assert "steps 10, 30" in capsys.readouterr().out
    averaged = load_trained(out)
    for got, a, b in zip(_leaves(averaged.params), _leaves(saved[10]), _leaves(saved[30]), strict=True):
        np.testing.assert_allclose(got, (a.astype(np.float64) + b) / 2, rtol=1e-6, atol=1e-7)


def test_refusals_leave_nothing_behind(run, tmp_path, capsys):
    workdir, _ = run
    with pytest.raises(CheckpointError, match="only 3 exist"):
        average_checkpoints(workdir, tmp_path / "a", last=4)
    with pytest.raises(CheckpointError, match=r"step\(s\) \[15\]"):
        average_checkpoints(workdir, tmp_path / "a", steps=[15, 20])
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "mine.txt").write_text("keep")
    with pytest.raises(StagingError, match="not an empty directory"):
        average_checkpoints(workdir, occupied, last=2)
    assert cli.main(["average", "--workdir", str(workdir), "--out", str(occupied), "--last", "2"]) == 2
    assert "not an empty directory" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["occupied"]
    assert [p.name for p in occupied.iterdir()] == ["mine.txt"]


def test_select_steps_and_average_params():
    assert select_steps([30, 10, 20], last=1) == [30]
    assert select_steps([30, 10, 20], steps=[20, 10, 20]) == [10, 20]
    with pytest.raises(ValueError, match="either last"):
        select_steps([10], last=1, steps=[10])
    mean = average_params([{"w": np.float32([1, 2])}, {"w": np.float32([2, 4])}, {"w": np.float32([0, 0])}])
    assert mean["w"].dtype == np.float32
    np.testing.assert_array_equal(mean["w"], [1, 2])
