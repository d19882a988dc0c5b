"""Fine-tuning (``train(..., init_from=...)``, ``seq2seq train --init-from``): the source's parameters exactly, its
tokenizers, a fresh optimizer and step count; a different model or tokenizer refused, naming the field."""

from __future__ import annotations

import json

import numpy as np
import pytest
from run_support import captured_log, tiny_config

from seq2seq_jax.core.config import ConfigError
from seq2seq_jax.training.fine_tune import InitFrom
from seq2seq_jax.training.trainer import train
from seq2seq_jax.training.workdir import load_trained


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = tmp_path_factory.mktemp("fine_tune") / "source"
    train(tiny_config("train.max_steps=8", "train.eval_every=8"), path)
    return path


def validations(workdir) -> list[dict]:
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [record for record in records if "valid_loss" in record]


def test_starts_from_the_source_parameters_exactly(source, tmp_path):
    (validated,) = validations(source)  # its one validation, at its last step: the best checkpoint
    source_step, source_loss = validated["step"], validated["valid_loss"]
    assert load_trained(source).step == source_step == 8
    # Only the training settings are this run's: the model and tokenizers come from the source.
    fine = tmp_path / "fine"
    with captured_log() as messages:
        train(tiny_config("train.max_steps=3", "train.learning_rate=1e-4"), fine, init_from=InitFrom(source))
    assert any(f"initialised from step {source_step} of {source}" in m for m in messages)
    first = validations(fine)[0]
    assert first["step"] == 0 and first["valid_loss"] == source_loss  # bit-exact: the same parameters and data
    assert (fine / "tokenizer" / "src.tokenizer.json").read_bytes() == \
        (source / "tokenizer" / "src.tokenizer.json").read_bytes()
    trained = load_trained(fine, "latest")
    assert trained.step == 3 and trained.config.model == load_trained(source).config.model
    started = load_trained(fine, 0)  # the step-0 checkpoint holds the source's parameters as they were
    for ours, theirs in zip(_leaves(started.params), _leaves(load_trained(source).params), strict=True):
        np.testing.assert_array_equal(ours, theirs)


def _leaves(tree):
    import jax

    return [np.asarray(leaf) for leaf in jax.tree.leaves(tree)]


def test_dropout_may_change_but_a_parameter_shape_or_tokenizer_may_not(source, tmp_path):
    train(tiny_config("train.max_steps=1", "model.embed_dropout=0.3"), tmp_path / "dropout", init_from=InitFrom(source))
    with pytest.raises(ConfigError, match=r"model\.enc_hidden_size is 12 here but 8 in the source"):
        train(tiny_config("train.max_steps=1", "model.enc_hidden_size=12"), tmp_path / "wider",
              init_from=InitFrom(source))
    with pytest.raises(ConfigError, match=r"data\.tokenizer is 'word' here but 'char' in the source"):
        train(tiny_config("train.max_steps=1", "data.tokenizer=word"), tmp_path / "words", init_from=InitFrom(source))
    with pytest.raises(ConfigError, match="not a trained workdir"):
        train(tiny_config("train.max_steps=1"), tmp_path / "x", init_from=InitFrom(tmp_path / "nowhere"))


def test_coverage_may_be_added_and_starts_at_zero(source, tmp_path):
    """``model.coverage_attention`` turned on in a fine-tuning run (See et al.'s final coverage phase): the new
    ``coverage_proj`` starts at zero, so the first validation equals the source's exactly; training with the
    coverage loss then moves it."""
    (validated,) = validations(source)
    fine = tmp_path / "coverage"
    train(tiny_config("train.max_steps=3", "model.coverage_attention=true", "train.coverage_loss_weight=1.0"), fine,
          init_from=InitFrom(source))
    first = validations(fine)[0]
    assert first["step"] == 0 and first["valid_loss"] == validated["valid_loss"]
    started, trained = load_trained(fine, 0), load_trained(fine, "latest")
    assert trained.config.model.coverage_attention
    coverage = [np.asarray(model.params["attention"]["coverage_proj"]["kernel"]) for model in (started, trained)]
    assert not coverage[0].any() and coverage[1].any()
