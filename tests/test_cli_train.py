"""``seq2seq train`` as a first run uses it: ``--preset`` without a config file (preset < --config < --set), the
one line that says a run on one's own files got the demo's model, and ``--init-from`` (fine-tuning) through the
command line. Tiny models, two steps each."""

from __future__ import annotations

import json

import pytest
from run_support import TINY, captured_log, tiny_config

from seq2seq_jax import cli
from seq2seq_jax.core.config import ConfigError, ExperimentConfig
from seq2seq_jax.training.tasks import generate_task
from seq2seq_jax.training.trainer import train
from seq2seq_jax.training.workdir import Workdir, load_trained


def sets(*overrides: str) -> list[str]:
    return [arg for override in (*TINY, *overrides) for arg in ("--set", override)]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Training and validation files of the dates task: "your own files"."""
    folder = tmp_path_factory.mktemp("files")
    for split, size in (("train", 200), ("valid", 20)):
        pairs = generate_task("dates", size, seed=7 if split == "train" else 8)
        (folder / f"{split}.src").write_text("".join(src + "\n" for src, _ in pairs), encoding="utf-8")
        (folder / f"{split}.tgt").write_text("".join(tgt + "\n" for _, tgt in pairs), encoding="utf-8")
    return ["--train-src", str(folder / "train.src"), "--train-tgt", str(folder / "train.tgt"),
            "--valid-src", str(folder / "valid.src"), "--valid-tgt", str(folder / "valid.tgt")]


def resolved(argv, workdir):
    """What ``seq2seq train ARGV`` would train, without training."""
    return cli._train_config(cli.build_parser().parse_args(["train", "--workdir", str(workdir), *argv]),
                             Workdir(workdir))


def test_own_files_without_a_preset_get_one_line_naming_the_presets(files, tmp_path):
    with captured_log() as messages:
        resolved(files, tmp_path / "W")
    [line] = messages
    assert "demo's defaults" in line and "character-level" in line and "--preset" in line
    with captured_log() as messages:
        resolved([*files, "--preset", "small"], tmp_path / "W")  # a preset, or the demo task itself: no line
        resolved(["--task", "dates"], tmp_path / "W")
    assert messages == []


def test_preset_then_config_file_then_set(files, tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"model": {"enc_layers": 2}, "train": {"max_steps": 50}}))
    config = resolved([*files, "--preset", "small", "--config", str(path), "--set", "train.max_steps=9"],
                      tmp_path / "W")
    small = ExperimentConfig.from_preset("small")
    assert (config.model.enc_layers, config.train.max_steps) == (2, 9)
    assert config.data.tokenizer == small.data.tokenizer == "unigram" and config.decode == small.decode
    (tmp_path / "W").mkdir()
    config.save(tmp_path / "W" / "config.json")
    with pytest.raises(ConfigError, match="--config and --preset are only for a new workdir"):
        resolved(["--preset", "small"], tmp_path / "W")


def test_train_with_a_preset_and_no_config_file(files, tmp_path, capsys):
    workdir = tmp_path / "W"
    assert cli.main(["train", "--workdir", str(workdir), "--preset", "small", *files,
                     *sets("train.max_steps=2")]) == 0, capsys.readouterr().err
    config = ExperimentConfig.load(workdir / "config.json")
    small = ExperimentConfig.from_preset("small")
    assert config.data.tokenizer == "unigram" and config.train.label_smoothing == small.train.label_smoothing
    assert config.decode == small.decode and config.model.enc_hidden_size == 8  # --set over the preset
    assert load_trained(workdir, "latest").step == 2


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = tmp_path_factory.mktemp("source") / "run"
    train(tiny_config("train.max_steps=4", "train.eval_every=4"), path)
    return path


def test_init_from_through_the_command_line(source, tmp_path, capsys):
    fine = tmp_path / "fine"
    code = cli.main(["train", "--workdir", str(fine), "--init-from", str(source), "--init-checkpoint", "latest",
                     *sets("train.max_steps=2", "train.learning_rate=1e-4")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"initialised from step 4 of {source}" in out
    assert (fine / "tokenizer" / "src.tokenizer.json").read_bytes() == \
        (source / "tokenizer" / "src.tokenizer.json").read_bytes()
    assert load_trained(fine, "latest").step == 2
    code = cli.main(["train", "--workdir", str(tmp_path / "wider"), "--init-from", str(source),
                     *sets("train.max_steps=1", "model.enc_hidden_size=12")])
    assert code == 2 and "model.enc_hidden_size is 12 here but 8 in the source" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["train", "--workdir", str(tmp_path / "x"), "--init-from", str(source), "--init-checkpoint", "last"])
    assert "'last' is not a checkpoint" in capsys.readouterr().err


def test_a_printed_preset_given_back_as_a_config_file_is_the_same_run(files, tmp_path, capsys):
    """``seq2seq config --preset small > small.json`` then ``train --config small.json`` trains what ``train
    --preset small`` trains: the same resolved config (and training is deterministic for a config)."""
    assert cli.main(["config", "--preset", "small"]) == 0
    (tmp_path / "small.json").write_text(capsys.readouterr().out, encoding="utf-8")
    from_file = resolved([*files, "--config", str(tmp_path / "small.json"), "--set", "train.max_steps=7"],
                         tmp_path / "A")
    from_preset = resolved([*files, "--preset", "small", "--set", "train.max_steps=7"], tmp_path / "B")
    assert from_file == from_preset and from_file.data.tokenizer == "unigram"
