"""seq2seq preprocess and the corpus it writes: records equal to encode_pairs of the same text, the report, the
same shards with 1 or 2 workers, clear errors for a missing or truncated shard and for bad input lines, nothing
left by an interrupted run, and training from it (train --data, --train-src through W/data, exact resume after
SIGKILL)."""

from __future__ import annotations

import copy
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from run_support import TINY, captured_log, step_losses, tiny_config

from seq2seq_jax import cli
from seq2seq_jax.core.config import ExperimentConfig
from seq2seq_jax.core.encoding import Example, encode_pairs
from seq2seq_jax.core.reading import DataError, read_parallel
from seq2seq_jax.core.tokenizer import load_tokenizers
from seq2seq_jax.training import preprocess as preprocess_lib
from seq2seq_jax.training import run_data
from seq2seq_jax.training import trainer as trainer_lib
from seq2seq_jax.training.corpus import MANIFEST_FILE, decode_record, decode_records, encode_record, open_corpus
from seq2seq_jax.training.preprocess import preprocess, reservoir_sample
from seq2seq_jax.training.workdir import Workdir

SOURCES = ["the cat sat", "a dog", "", "birds fly south in winter and come back", "x", "the end\r", "ok", "b c"]
TARGETS = ["le chat", "un chien", "vide", "les oiseaux", "", "la fin", "bien", "b c d e f g h i j k"]
SETTINGS = ["data.tokenizer=word", "data.max_src_len=6", "data.max_tgt_len=6"]


def write_pairs(directory: Path, name: str, sources, targets, newline: str = "\n") -> tuple[Path, Path]:
    src, tgt = directory / f"{name}.src", directory / f"{name}.tgt"
    src.write_bytes("".join(line + newline for line in sources).encode("utf-8"))
    tgt.write_bytes("".join(line + newline for line in targets).encode("utf-8"))
    return src, tgt


def file_config(directory: Path, *settings: str, valid: bool = True) -> ExperimentConfig:
    train_src, train_tgt = write_pairs(directory, "train", SOURCES * 5, TARGETS * 5)
    files = [f"data.train_src={train_src}", f"data.train_tgt={train_tgt}"]
    if valid:
        valid_src, valid_tgt = write_pairs(directory, "valid", SOURCES, TARGETS, newline="\r\n")
        files += [f"data.valid_src={valid_src}", f"data.valid_tgt={valid_tgt}"]
    return ExperimentConfig().with_overrides(SETTINGS + files + list(settings))


def corpus_files(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir()) if path.is_file()}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A corpus of the text above (one record per shard group of 7) and its config."""
    directory = tmp_path_factory.mktemp("made")
    config = file_config(directory)
    corpus = preprocess(config, directory / "D", records_per_shard=7, progress=False)
    return config, corpus


def test_records_are_encode_pairs_of_the_same_text(made):
    config, corpus = made
    src_tok, tgt_tok = load_tokenizers(corpus.path / "tokenizer")
    for name, (src, tgt) in (("train", (config.data.train_src, config.data.train_tgt)),
                             ("valid", (config.data.valid_src, config.data.valid_tgt))):
        pairs = read_parallel(src, tgt)
        expected, report = encode_pairs(pairs, src_tok, tgt_tok, config.data, name=name)
        split = corpus.split(name)
        assert len(split) == len(expected) > 0
        for got, want in zip(split, expected, strict=True):
            assert np.array_equal(got.src, want.src) and np.array_equal(got.tgt, want.tgt)
        assert [len(e.src) for e in expected] == split.lengths[:, 0].tolist()
        assert [len(e.tgt) for e in expected] == split.lengths[:, 1].tolist()
        picked = split.__getitems__([len(split) - 1, 0])
        assert np.array_equal(picked[0].tgt, expected[-1].tgt) and np.array_equal(picked[1].src, expected[0].src)
        assert np.array_equal(split[-1].src, expected[-1].src)
        assert corpus.reports()[name].to_dict() == report.to_dict()
        if name == "valid":
            assert corpus.valid_pairs() == [pairs.pairs[i] for i in report.kept_indices]
    manifest = corpus.manifest
    assert [shard["records"] for shard in manifest["splits"]["train"]["shards"]] == [7, 7, 6]
    assert manifest["splits"]["train"]["shards"][0]["file"] == "train-00000-of-00003.array_record"
    assert manifest["sources"]["train"]["files"][0] == {"path": str(Path(config.data.train_src).resolve()),
                                                        "bytes": Path(config.data.train_src).stat().st_size}
    assert corpus.config().model.src_vocab_size == src_tok.vocab_size


def test_report_counts(made):
    _, corpus = made
    train = json.loads((corpus.path / "report.json").read_text())["train"]
    # Of each 8 pairs: 2 with an empty side, 2 longer than 6 tokens (EOS included), 4 kept.
    assert (train["total"], train["kept"], train["dropped_empty"], train["dropped_long"], train["cropped"]) == (
        40, 20, 10, 10, 0)
    assert train["replaced_lines"] == 0 and train["src_unk"] == 0


def test_record_format_round_trip():
    example = Example(np.array([5, 6, 3], np.int32), np.array([7], np.int32))
    record = encode_record(example)
    assert record == np.array([3, 5, 6, 3, 7], "<i4").tobytes()
    decoded = decode_record(record)
    assert decoded.src.tolist() == [5, 6, 3] and decoded.tgt.tolist() == [7]


def test_bulk_reads_across_shards_keep_the_order_asked_for(made):
    _, corpus = made
    split = corpus.split("train")
    one_by_one = [split[i] for i in range(len(split))]
    wanted = np.random.default_rng(0).permutation(np.concatenate([np.arange(len(split)), [3, -1, -len(split)]]))
    for got, index in zip(split.__getitems__(wanted), wanted.tolist(), strict=True):
        assert np.array_equal(got.src, one_by_one[index].src) and np.array_equal(got.tgt, one_by_one[index].tgt)
    assert wanted.min() < 0  # the caller's indices are not changed in place
    with pytest.raises(IndexError, match=f"index {len(split)} out of range for {len(split)} examples"):
        split.__getitems__([0, len(split)])
    restored = pickle.loads(pickle.dumps(split))
    assert np.array_equal(restored[5].tgt, one_by_one[5].tgt)


def test_records_that_do_not_fit_the_format_are_errors():
    decoded = decode_records([np.array([1, 3, 7, 8], "<i4").tobytes(), np.array([2, 4, 3], "<i4").tobytes()])
    assert [(e.src.tolist(), e.tgt.tolist()) for e in decoded] == [([3], [7, 8]), ([4, 3], [])]
    with pytest.raises(DataError, match="record 1 of a read has 6 bytes"):
        decode_records([np.array([1, 3], "<i4").tobytes(), b"\x01" * 6])
    with pytest.raises(DataError, match="record 0 of a read has a source length 5 that does not fit its 2 ids"):
        decode_records([np.array([5, 3, 4], "<i4").tobytes()])


def test_one_and_two_workers_write_identical_corpora(tmp_path, monkeypatch):
    config = file_config(tmp_path, "data.long_pair_policy=crop")
    monkeypatch.setattr(preprocess_lib, "CHUNK_PAIRS", 3)  # many chunks for the two workers to share
    one = preprocess(config, tmp_path / "one", workers=1, records_per_shard=8, progress=False)
    two = preprocess(config, tmp_path / "two", workers=2, records_per_shard=8, progress=False)
    assert corpus_files(one.path) == corpus_files(two.path)
    assert corpus_files(one.path / "tokenizer") == corpus_files(two.path / "tokenizer")
    assert one.reports()["train"].cropped == 10


def test_reservoir_sample_is_bounded_uniform_and_in_order():
    pairs = [(str(i), str(i), False) for i in range(1000)]
    sample, count = reservoir_sample(pairs, 100)
    assert count == 1000 and len(sample) == 100
    assert [int(s) for s, _ in sample] == sorted(int(s) for s, _ in sample)
    assert reservoir_sample(pairs, 100) == (sample, count)  # seeded
    assert 300 < np.mean([int(s) for s, _ in sample]) < 700
    assert reservoir_sample(pairs[:50], 100) == ([(p[0], p[1]) for p in pairs[:50]], 50)


def test_tokenizers_trained_on_the_sample_size(tmp_path):
    config = file_config(tmp_path, "data.tokenizer_sample_size=3", "data.tokenizer=char", valid=False)
    with captured_log() as messages:
        corpus = preprocess(config, tmp_path / "D", progress=False)
    assert "tokenizers: trained on 3 of 40 training pairs" in messages
    assert not corpus.has_split("valid") and corpus.valid_pairs() == []
    # a char vocabulary of 3 pairs misses letters of the others: unknown tokens, counted
    assert corpus.reports()["train"].src_unk > 0


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_a_missing_or_truncated_shard_is_an_error_naming_it(tmp_path, made, damage):
    _, corpus = made
    copy = tmp_path / "D"
    copy.mkdir()
    for name, content in corpus_files(corpus.path).items():
        (copy / name).write_bytes(content)
    shard = copy / "train-00001-of-00003.array_record"
    if damage == "missing":
        shard.unlink()
    else:
        shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(DataError, match=f"{shard}: {damage}"):
        open_corpus(copy)


def test_a_setting_newer_than_the_corpus_compares_as_its_default(made):
    """A manifest written before a data setting existed matches a config holding that setting's default, and no
    other value of it."""
    config, corpus = made
    older = copy.deepcopy(corpus)
    older.manifest["data_config"].pop("corpora")
    assert preprocess_lib.corpus_mismatch(older, config.data) is None
    other = config.with_overrides(["data.max_src_len=5"]).data
    assert "data.max_src_len=5 here, 6 in the corpus" in preprocess_lib.corpus_mismatch(older, other)


def test_a_directory_without_manifest_is_not_a_corpus(tmp_path, made):
    with pytest.raises(DataError, match="manifest.json not found: .* is not a finished preprocessed corpus"):
        open_corpus(tmp_path)


def test_bad_lines_name_the_file_and_line_and_leave_no_output(tmp_path):
    config = file_config(tmp_path, valid=False)
    src = Path(config.data.train_src)
    good = src.read_bytes()
    src.write_bytes(good.replace(b"a dog", b"a d\xffog", 1))
    with pytest.raises(DataError, match=f"{src}:2: invalid UTF-8"):
        preprocess(config, tmp_path / "D", progress=False)
    replaced = preprocess(config.with_overrides(["data.encoding_errors=replace"]), tmp_path / "R",
                          progress=False)
    assert replaced.reports()["train"].replaced_lines == 1
    src.write_bytes(good)
    tgt = Path(config.data.train_tgt)
    tgt.write_bytes(tgt.read_bytes() + b"one more\n")
    with pytest.raises(DataError, match=f"{src} ends after line 40 but {tgt} goes on: line 41 of {tgt}"):
        preprocess(config, tmp_path / "D", progress=False)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["R", "train.src", "train.tgt"]


def test_an_existing_output_is_refused(tmp_path, made):
    config, corpus = made
    with pytest.raises(DataError, match="already holds a preprocessed corpus"):
        preprocess(config, corpus.path, progress=False)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "train-00000-of-00001.array_record").write_bytes(b"x")
    with pytest.raises(DataError, match="not empty and holds no manifest.json"):
        preprocess(config, tmp_path / "half", progress=False)


def test_an_interrupted_preprocess_leaves_no_output(tmp_path):
    config = file_config(tmp_path)
    config.save(tmp_path / "config.json")
    script = textwrap.dedent(f"""
        import os, signal
        from seq2seq_jax.training import preprocess as p
        from seq2seq_jax.core.config import ExperimentConfig
        def killed(self):  # the train shards are written; dies before renaming them
            os.kill(os.getpid(), signal.SIGKILL)
        p._ShardWriter.close = killed
        p.preprocess(ExperimentConfig.load({str(tmp_path / 'config.json')!r}), {str(tmp_path / 'D')!r},
                     records_per_shard=7, progress=False)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True,
                            env={**os.environ, "PYTHONPATH": str(Path(cli.__file__).parent.parent)})
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()[-2000:]
    assert not (tmp_path / "D").exists()
    leftovers = [path for path in tmp_path.iterdir() if path.name.startswith(".D.tmp-")]
    assert len(leftovers) == 1 and not (leftovers[0] / MANIFEST_FILE).exists()
    assert preprocess(config, tmp_path / "D", progress=False).split("train")
    assert not leftovers[0].exists()  # the next run removed what the killed one left


def run_cli(*argv: str) -> int:
    return cli.main([str(arg) for arg in argv])


def test_train_from_files_goes_through_the_workdir_corpus(tmp_path, capsys):
    config = file_config(tmp_path, "train.max_steps=2", *TINY)
    workdir = tmp_path / "W"
    trainer_lib.train(config, workdir)
    corpus = open_corpus(workdir / "data")
    assert corpus.manifest["sources"]["train"]["files"][0]["path"] == str(Path(config.data.train_src).resolve())
    assert sorted(step_losses(workdir)) == [1, 2]
    trainer_lib.train(config.with_overrides(["train.max_steps=3"]), workdir)  # resumes, same data
    assert sorted(step_losses(workdir)) == [1, 2, 3]
    with Path(config.data.train_src).open("a") as src, Path(config.data.train_tgt).open("a") as tgt:
        src.write("one more\n")
        tgt.write("encore\n")
    with pytest.raises(DataError, match=f"{workdir / 'data'} holds the corpus this workdir was trained on.*"
                                        "the source files differ"):
        trainer_lib.train(config.with_overrides(["train.max_steps=4"]), workdir)


def test_a_workdir_with_tokenizers_keeps_them_and_refuses_a_corpus_made_with_others(tmp_path, made):
    _, other = made  # word tokenizers
    run = Workdir(tmp_path / "W")  # as import-torch leaves it: tokenizers (of another task here), no data
    src_tok, tgt_tok = preprocess(tiny_config("data.task=reverse"), tmp_path / "reverse",
                                  progress=False).tokenizers()
    src_tok.save(run.tokenizer_dir, "src")
    tgt_tok.save(run.tokenizer_dir, "tgt")
    corpus = run_data.prepare_corpus(tiny_config(), run)  # the dates task, with W's tokenizers
    assert corpus.path == run.path / "data"
    assert corpus_files(corpus.path / "tokenizer") == corpus_files(run.tokenizer_dir)
    assert corpus.reports()["train"].src_unk > 0  # letters only: the digits of dates are unknown
    with pytest.raises(DataError, match=f"the src tokenizer of {other.path} differs from that of "
                                        f"{run.tokenizer_dir}"):
        run_data.prepare_run(tiny_config(), run, other)


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory) -> Path:
    """The tiny dates corpus of run_support's config, preprocessed."""
    directory = tmp_path_factory.mktemp("tiny") / "D"
    preprocess(tiny_config(), directory, progress=False)
    return directory


def test_train_data_cli_records_the_corpus_and_refuses_other_settings(tmp_path, tiny_corpus, capsys):
    workdir = tmp_path / "W"
    sets = [arg for pair in TINY + ["train.max_steps=2"] for arg in ("--set", pair)]
    assert run_cli("train", "--data", tiny_corpus, "--workdir", workdir, *sets) == 0
    saved = json.loads((workdir / "config.json").read_text())["data"]
    assert saved["preprocessed_dir"] == str(tiny_corpus.resolve()) and saved["task_train_size"] == 200
    assert sorted(step_losses(workdir)) == [1, 2]
    capsys.readouterr()
    assert run_cli("train", "--data", tiny_corpus, "--workdir", tmp_path / "W2", "--set", "data.max_src_len=7") == 2
    assert "the corpus was made with other data settings than this run's (data.max_src_len=7 here, 100 in the " \
           "corpus)" in capsys.readouterr().err
    assert run_cli("train", "--data", tiny_corpus, "--workdir", tmp_path / "W3", "--task", "dates") == 2
    assert "no --task beside it" in capsys.readouterr().err
    assert run_cli("train", "--data", tmp_path / "nowhere", "--workdir", tmp_path / "W4") == 2
    assert "no such directory" in capsys.readouterr().err


def test_preprocess_cli_reuses_a_workdirs_tokenizers(tmp_path, tiny_corpus, capsys):
    config = file_config(tmp_path, valid=False)
    out = tmp_path / "D"
    assert run_cli("preprocess", "--train-src", config.data.train_src, "--train-tgt", config.data.train_tgt,
                   "--out", out, "--workdir", tiny_corpus, "--set", "data.max_src_len=50") == 0
    assert f"wrote {out}: train " in capsys.readouterr().out
    assert corpus_files(out / "tokenizer") == corpus_files(tiny_corpus / "tokenizer")
    assert json.loads((out / "config.json").read_text())["data"]["tokenizer"] == "char"  # the workdir's settings


def test_resume_after_sigkill_on_train_data_is_bit_identical(tmp_path, tiny_corpus, capsys):
    reference = tmp_path / "reference"
    trainer_lib.train(tiny_config("train.max_steps=12", f"data.preprocessed_dir={tiny_corpus.resolve()}"),
                      reference)
    uninterrupted = step_losses(reference)
    workdir = tmp_path / "run"
    command = [sys.executable, "-m", "seq2seq_jax", "train", "--data", str(tiny_corpus), "--workdir", str(workdir)]
    for pair in TINY + ["train.max_steps=100000"]:
        command += ["--set", pair]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "JAX_PLATFORMS": "cpu"})
    deadline = time.time() + 240
    try:  # killed once the step-4 checkpoint (save_every=4) is committed, i.e. renamed to its step
        while time.time() < deadline and not (workdir / "checkpoints" / "4").is_dir():
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    capsys.readouterr()
    assert run_cli("train", "--workdir", workdir, "--set", "train.max_steps=12") == 0  # no --data: the config has it
    output = capsys.readouterr().out
    resumed_from = [int(line.split()[3]) for line in output.splitlines() if line.startswith("resumed from step")]
    assert resumed_from and resumed_from[0] >= 4, output
    resumed = step_losses(workdir)
    assert sorted(resumed) == list(range(1, 13))
    for step in range(1, 13):
        assert resumed[step] == uninterrupted[step], step  # bit-identical, not approximately equal
