"""The command line as a user runs it: translate (one line out per line in, order kept, a blank line in gives
an empty line out in every mode, a bounded number of compiled programs), evaluate, plot, and clear errors for
bad input (one line; the traceback with --verbose)."""

from __future__ import annotations

import dataclasses
import io
import json
import re
import sys

import jax
import pytest
from run_support import tiny_config

from seq2seq_jax import cli
from seq2seq_jax.decoding.translate import Translator
from seq2seq_jax.training.tasks import generate_task
from seq2seq_jax.training.trainer import train
from seq2seq_jax.training.workdir import load_trained


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "run"
    train(tiny_config("train.max_steps=8", "train.eval_every=8"), path)
    return path


def run_cli(args, capsys, monkeypatch, stdin: str | None = None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin.encode("utf-8")), encoding="utf-8"))
    code = cli.main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("beam_size", ["1", "3"])
def test_translate_one_line_per_line_in_order(workdir, capsys, monkeypatch, beam_size):
    lines = ["March 3, 2021", "", "14 July 1789", "  ", "1999-12-31", ""]
    code, out, err = run_cli(["translate", "--workdir", str(workdir), "--beam-size", beam_size, "--batch-size", "2"],
                             capsys, monkeypatch, stdin="\n".join(lines) + "\n")
    assert code == 0, err
    outputs = out.split("\n")
    assert outputs[-1] == "" and len(outputs) - 1 == len(lines)
    # Order is kept: translating the lines one by one gives the same outputs.
    for line, expected in zip(lines, outputs, strict=False):
        code, single, _ = run_cli(["translate", "--workdir", str(workdir), "--beam-size", beam_size], capsys,
                                  monkeypatch, stdin=line + "\n")
        assert single == expected + "\n"


def test_translate_compiles_one_program_per_padded_shape(workdir, capsys, monkeypatch):
    sources = [src for src, _ in generate_task("dates", 60, seed=5)]
    code, out, err = run_cli(["translate", "--workdir", str(workdir), "--batch-size", "16", "-v"], capsys,
                             monkeypatch, stdin="\n".join(sources) + "\n")
    assert code == 0 and len(out.splitlines()) == 60  # -v: the log lines go to stderr, stdout is translations
    assert "compiling search for source length" in err
    shapes = {(len(s) + 1 + 15) // 16 for s in sources}  # char tokenizer: one token per character, plus EOS
    compiled = int(re.search(r"with (\d+) compiled", err).group(1))
    assert 1 <= compiled <= len(shapes) < 60


def test_n_best_and_sampling(workdir, capsys, monkeypatch):
    code, out, err = run_cli(["translate", "--workdir", str(workdir), "--beam-size", "3", "--n-best", "2"], capsys,
                             monkeypatch, stdin="May 1, 2000\n")
    assert code == 0, err
    assert len(out.splitlines()) == 2 and "\t" not in out  # --n-best N: N lines per input, best first
    code, scored, err = run_cli(["translate", "--workdir", str(workdir), "--beam-size", "3", "--n-best", "2",
                                 "--with-score"], capsys, monkeypatch, stdin="May 1, 2000\n")
    rows = [line.split("\t") for line in scored.splitlines()]
    assert [row[0] for row in rows] == out.splitlines() and float(rows[0][1]) >= float(rows[1][1])
    code, one_line, err = run_cli(["translate", "--workdir", str(workdir), "--beam-size", "3", "--n-best", "2",
                                   "--one-line-per-input"], capsys, monkeypatch, stdin="May 1, 2000\n")
    assert one_line.rstrip("\n").split("\t") == [field for row in rows for field in row]
    greedy = run_cli(["translate", "--workdir", str(workdir), "--with-score"], capsys, monkeypatch,
                     stdin="May 1, 2000\n")[1]
    assert len(greedy.splitlines()) == 1 and float(greedy.rstrip("\n").split("\t")[1]) <= 0
    args = ["translate", "--workdir", str(workdir), "--sample", "--temperature", "1.5", "--seed", "3"]
    first = run_cli(args, capsys, monkeypatch, stdin="May 1, 2000\nJune 2, 1999\n")[1]
    second = run_cli(args, capsys, monkeypatch, stdin="May 1, 2000\nJune 2, 1999\n")[1]
    assert first == second and len(first.splitlines()) == 2


def test_evaluate_reports_bleu_chrf_perplexity(workdir, tmp_path, capsys, monkeypatch):
    pairs = generate_task("dates", 12, seed=9)
    (tmp_path / "src").write_text("\n".join(s for s, _ in pairs) + "\n")
    (tmp_path / "ref").write_text("\n".join(t for _, t in pairs) + "\n")
    code, out, err = run_cli(["evaluate", "--workdir", str(workdir), "--src", str(tmp_path / "src"), "--ref",
                              str(tmp_path / "ref"), "--json", "--rouge"], capsys, monkeypatch)
    assert code == 0, err
    result = json.loads(out)
    assert "nrefs:1" in result["bleu_signature"] and result["perplexity"] > 1.0
    assert {"bleu", "chrf", "rouge1", "rouge2", "rougeL", "exact_match"} <= set(result)


def test_evaluate_refuses_mismatched_counts(workdir, tmp_path, capsys, monkeypatch):
    (tmp_path / "src").write_text("a\nb\nc\n")
    (tmp_path / "ref").write_text("a\nb\n")
    code, _, err = run_cli(["evaluate", "--workdir", str(workdir), "--src", str(tmp_path / "src"), "--ref",
                            str(tmp_path / "ref")], capsys, monkeypatch)
    assert code == 2 and "3 lines" in err and "has 2" in err


def test_plot_writes_pngs(workdir, tmp_path, capsys, monkeypatch):
    code, out, err = run_cli(["plot", "--workdir", str(workdir), "--out", str(tmp_path / "curves.png"),
                              "--attention", "May 1, 2000", "--attention-output", str(tmp_path / "attention.png")],
                             capsys, monkeypatch)
    assert code == 0, err
    for name in ("curves.png", "attention.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_refuses_mismatched_files(tmp_path, capsys, monkeypatch):
    (tmp_path / "train.src").write_text("a\nb\nc\n")
    (tmp_path / "train.tgt").write_text("a\nb\n")
    code, _, err = run_cli(["train", "--workdir", str(tmp_path / "run"), "--train-src", str(tmp_path / "train.src"),
                            "--train-tgt", str(tmp_path / "train.tgt")], capsys, monkeypatch)
    assert code == 2
    assert "train.src" in err and "train.tgt" in err and "3" in err and "2" in err


def test_train_reports_invalid_utf8_with_file_and_line(tmp_path, capsys, monkeypatch):
    (tmp_path / "train.src").write_bytes(b"ok\nbad \xff byte\n")
    (tmp_path / "train.tgt").write_text("ok\nfine\n")
    code, _, err = run_cli(["train", "--workdir", str(tmp_path / "run"), "--train-src", str(tmp_path / "train.src"),
                            "--train-tgt", str(tmp_path / "train.tgt")], capsys, monkeypatch)
    assert code == 2 and "train.src:2" in err


def test_unknown_setting_is_a_clear_error(tmp_path, capsys, monkeypatch):
    code, _, err = run_cli(["train", "--workdir", str(tmp_path / "run"), "--set", "model.hiden=3"], capsys,
                           monkeypatch)
    assert code == 2 and "model.hiden" in err


def test_translator_decodes_with_the_parameters_it_was_last_given(workdir):
    """The trainer hands one Translator new parameters before each validation: its compiled searches must decode
    with the new ones (the parameters are an argument of every search call, nothing derived from them is kept)."""
    trained = load_trained(workdir)
    decode = dataclasses.replace(trained.config.decode, beam_size=3, n_best=1, batch_size=2)  # 6 rows
    lines = [source for source, _ in generate_task("dates", 4, seed=11)]
    changed = jax.tree.map(lambda leaf: leaf * 1.5, trained.params)

    def scores(translator):
        return [hyps[0].score for hyps in translator.translate(lines)]

    reused = Translator(trained.graphdef, trained.params, trained.src_tokenizer, trained.tgt_tokenizer, decode)
    before = scores(reused)
    reused.params = changed
    fresh = Translator(trained.graphdef, changed, trained.src_tokenizer, trained.tgt_tokenizer, decode)
    assert scores(reused) == pytest.approx(scores(fresh), abs=1e-6)
    assert scores(fresh) != pytest.approx(before, abs=1e-3)


BLANK_MIX = ["March 3, 2021", "", "   ", "\t", "14 July 1789", " \u3000 ", "1999-12-31"]


@pytest.mark.parametrize("mode", [["--beam-size", "1"], ["--beam-size", "3"], ["--sample", "--seed", "4"],
                                  ["--beam-size", "3", "--n-best", "2", "--one-line-per-input"]],
                         ids=["greedy", "beam", "sample", "n-best"])
def test_blank_lines_give_empty_lines_in_every_mode(workdir, tmp_path, capsys, monkeypatch, mode):
    plots = tmp_path / "plots"
    code, out, err = run_cli(["translate", "--workdir", str(workdir), "--batch-size", "2", "--plot-attention",
                              str(plots), *mode], capsys, monkeypatch, stdin="\n".join(BLANK_MIX) + "\n")
    assert code == 0, err
    outputs = out.split("\n")
    assert outputs[-1] == "" and len(outputs) - 1 == len(BLANK_MIX)
    for number, (line, output) in enumerate(zip(BLANK_MIX, outputs, strict=False), start=1):
        if not line.strip():
            assert output == "", (line, output)
        elif "--n-best" in mode:
            assert len(output.split("\t")) == 4
        assert (plots / f"attention_{number:05d}.png").exists() == bool(line.strip())
    if "--sample" not in mode:  # the other lines translate as they do without the blank ones
        kept = [line for line in BLANK_MIX if line.strip()]
        alone = run_cli(["translate", "--workdir", str(workdir), "--batch-size", "2", *mode], capsys, monkeypatch,
                        stdin="\n".join(kept) + "\n")[1]
        assert alone.splitlines() == [out for line, out in zip(BLANK_MIX, outputs, strict=False) if line.strip()]


def test_blank_sources_are_never_decoded(workdir):
    trained = load_trained(workdir)
    translator = Translator(trained.graphdef, trained.params, trained.src_tokenizer, trained.tgt_tokenizer,
                            dataclasses.replace(trained.config.decode, beam_size=2, n_best=2))
    assert translator.translate(["", " ", "\t\t"]) == [[], [], []]
    assert translator.translate_best(["", "  "]) == ["", ""]
    assert translator.compiled_programs == 0
    assert [len(hyps) for hyps in translator.translate(["", "May 1, 2000", "  "])] == [0, 2, 0]


def test_evaluate_scores_a_blank_source_as_an_empty_hypothesis(workdir, tmp_path, capsys, monkeypatch):
    (tmp_path / "src").write_text("\nMarch 3, 2021\n")
    (tmp_path / "ref").write_text("\nnot a date the model can write\n")
    code, out, err = run_cli(["evaluate", "--workdir", str(workdir), "--src", str(tmp_path / "src"), "--ref",
                              str(tmp_path / "ref"), "--json"], capsys, monkeypatch)
    assert code == 0, err
    result = json.loads(out)
    assert result["sentences"] == 2 and result["exact_match"] == 50.0  # the blank line's "" equals its ""


def test_plot_attention_of_a_blank_sentence_is_a_clear_error(workdir, tmp_path, capsys, monkeypatch):
    code, _, err = run_cli(["plot", "--workdir", str(workdir), "--out", str(tmp_path / "curves.png"),
                            "--attention", "  "], capsys, monkeypatch)
    assert code == 2 and "blank" in err and "Traceback" not in err


def test_errors_are_one_line_and_the_traceback_comes_with_verbose(tmp_path, capsys, monkeypatch):
    args = ["translate", "--workdir", str(tmp_path / "missing")]
    code, _, err = run_cli(args, capsys, monkeypatch, stdin="x\n")
    assert code == 2 and err.count("\n") == 1 and "config.json not found" in err
    for verbose in (["--verbose", *args], [*args, "-v"]):
        code, _, err = run_cli(verbose, capsys, monkeypatch, stdin="x\n")
        assert code == 2 and "config.json not found" in err.splitlines()[0] and "Traceback" in err


def test_triples_input_is_linearized_as_the_data_to_text_recipe_trains(workdir, tmp_path, capsys, monkeypatch):
    triples = "Aarhus_Airport | cityServed | \"Aarhus, Denmark\"\n\nMay_1 | yearOf | 2000\n"
    linear = "<S> Aarhus Airport <P> city served <O> Aarhus, Denmark\n\n<S> May 1 <P> year of <O> 2000\n"
    as_triples = run_cli(["translate", "--workdir", str(workdir), "--input-format", "triples"], capsys, monkeypatch,
                         stdin=triples)
    as_text = run_cli(["translate", "--workdir", str(workdir)], capsys, monkeypatch, stdin=linear)
    assert as_triples[0] == as_text[0] == 0 and as_triples[1] == as_text[1] and len(as_text[1].split("\n")) == 4
    (tmp_path / "sets.src").write_text(triples, encoding="utf-8")
    (tmp_path / "ref").write_text("a\n\nb\n", encoding="utf-8")
    code, out, err = run_cli(["evaluate", "--workdir", str(workdir), "--src", str(tmp_path / "sets.src"), "--ref",
                              str(tmp_path / "ref"), "--input-format", "triples", "--json"], capsys, monkeypatch)
    assert code == 0 and json.loads(out)["sentences"] == 3, err
    (tmp_path / "bad.src").write_text("A | b | C\nA | b\n", encoding="utf-8")
    code, _, err = run_cli(["evaluate", "--workdir", str(workdir), "--src", str(tmp_path / "bad.src"), "--ref",
                            str(tmp_path / "ref"), "--input-format", "triples"], capsys, monkeypatch)
    assert code == 2 and "bad.src:2: triple 1" in err
