"""seq2seq_jax.load (the README's Python API), and the commands that run through it: translate with --prefix and
several --workdir, score, evaluate of an ensemble, their bad-input errors, and the torch_ref twins
(python -m torch_ref.translate with several exports and --prefix, python -m torch_ref.score).

Two tiny workdirs (two seeds) are trained once for the module (4 steps each); a third is a copy of the
first whose target vocabulary differs in one character."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from run_support import tiny_config

import seq2seq_jax
from seq2seq_jax import cli
from seq2seq_jax.core.tokenizer import TokenizerError
from seq2seq_jax.training.export import export_torch
from seq2seq_jax.training.trainer import train
from torch_ref import score as torch_score
from torch_ref import translate as torch_translate

REPO = Path(__file__).resolve().parents[1]
LINES = ["March 3, 2021", "", "14 July 1789", "1999-12-31", "  "]
PREFIXES = ["20", "1", "", "19", "7"]


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    first, second, other = root / "dates", root / "dates-seed1", root / "dates-other-vocab"
    train(tiny_config("train.max_steps=4"), first)
    # Another seed, the same shapes: the training program compiles once (tests/test_ensemble.py ensembles
    # models of different sizes).
    train(tiny_config("train.max_steps=4", "train.seed=1"), second)
    shutil.copytree(first, other)
    metadata = other / "tokenizer" / "tgt.tokenizer.json"
    record = json.loads(metadata.read_text(encoding="utf-8"))
    tokens = next(value for value in record.values() if isinstance(value, list))
    tokens[-1] = "\u00e9" if tokens[-1] != "\u00e9" else "\u00e8"
    metadata.write_text(json.dumps(record), encoding="utf-8")
    return first, second, other


def run_cli(args, capsys, stdin: str | None = None):
    if stdin is not None:
        sys.stdin = io.TextIOWrapper(io.BytesIO(stdin.encode("utf-8")), encoding="utf-8")
    try:
        code = cli.main([str(arg) for arg in args])
    finally:
        sys.stdin = sys.__stdin__
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_readme_python_api_runs(workdirs):
    """The README's "Python API" example, run as written (its workdir paths pointed at the fixture)."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Python API", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    code = code.replace('"runs/dates-seed1"', repr(str(workdirs[1]))).replace('"runs/dates"', repr(str(workdirs[0])))
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(compile(code, "README.md", "exec"), {})
    printed = output.getvalue().splitlines()
    assert len(printed) == 6
    assert printed[3].startswith("2021-")  # the prefixed translation


def test_translate_strings_lists_prefixes_and_scores(workdirs):
    model = seq2seq_jax.load(workdirs[0], beam_size=3)
    single = model.translate("March 3, 2021", n_best=3)
    assert len(single) == 3 and single[0].score >= single[1].score >= single[2].score
    results = model.translate(LINES, prefix=PREFIXES, n_best=2)
    assert len(results) == len(LINES)
    for line, prefix, hypotheses in zip(LINES, PREFIXES, results, strict=True):
        if not line.strip():  # a blank line is not translated, whatever its prefix
            assert hypotheses == []
            continue
        assert len(hypotheses) == 2 and all(h.text.startswith(prefix) for h in hypotheses)
    # Each line with its prefix alone gives what it gave in the batch (mixed prefix lengths in one batch).
    for line, prefix, hypotheses in zip(LINES, PREFIXES, results, strict=True):
        alone = model.translate(line, prefix=prefix, n_best=2)
        assert [h.tokens for h in alone] == [h.tokens for h in hypotheses]
    scores = model.score(LINES, ["2021-03-03", "", "1789-07-14", "1", "x"])
    assert [s.count for s in scores] == [11, 1, 11, 2, 2] and all(s.log_prob < 0 for s in scores)
    with pytest.raises(TypeError, match="prefix"):
        model.translate(["a"], prefix="b")
    with pytest.raises(TypeError, match="unknown decoding settings"):
        model.translate("a", beam=3)


def test_ensemble_api(workdirs):
    first, second, other = workdirs
    alone = seq2seq_jax.load(first, beam_size=3, n_best=3)
    doubled = seq2seq_jax.load([first, first], beam_size=3, n_best=3)
    for a, b in zip(alone.translate(LINES), doubled.translate(LINES), strict=True):
        assert [(h.tokens, h.score) for h in a] == [(h.tokens, h.score) for h in b]
    assert [s.log_prob for s in alone.score(LINES, LINES)] == pytest.approx(
        [s.log_prob for s in doubled.score(LINES, LINES)], rel=1e-6)
    mixed = seq2seq_jax.load([first, second])
    assert mixed.is_ensemble and len(mixed.translate(LINES)) == len(LINES)
    separately = [seq2seq_jax.load(w).score(LINES[0], "2021-03-03").log_prob for w in (first, second)]
    together = mixed.score(LINES[0], "2021-03-03").log_prob
    # Per piece, log of the mean probability >= the mean of the log-probabilities (Jensen), strictly here.
    assert together > np.mean(separately) and together not in separately
    with pytest.raises(TokenizerError, match=re.escape(f"the tgt tokenizer of {other}")):
        seq2seq_jax.load([first, other])


def test_cli_translate_with_prefix_and_ensemble(workdirs, tmp_path, capsys):
    first, second, _ = workdirs
    (tmp_path / "prefix.txt").write_text("\n".join(PREFIXES) + "\n")
    stdin = "\n".join(LINES) + "\n"
    code, out, err = run_cli(["translate", "--workdir", first, "--beam-size", "3", "--prefix", tmp_path / "prefix.txt"],
                             capsys, stdin)
    assert code == 0, err
    outputs = out.split("\n")[:-1]
    assert len(outputs) == len(LINES)
    for line, output, prefix in zip(LINES, outputs, PREFIXES, strict=True):  # a blank line gives an empty line
        assert output.startswith(prefix) if line.strip() else output == ""
    single = run_cli(["translate", "--workdir", first, "--beam-size", "3", "--n-best", "2"], capsys, stdin)
    doubled = run_cli(["translate", "--workdir", first, "--workdir", first, "--beam-size", "3", "--n-best", "2"],
                      capsys, stdin)
    assert single[0] == doubled[0] == 0 and single[1] == doubled[1]
    code, out, err = run_cli(["translate", "--workdir", first, "--workdir", second], capsys, stdin)
    assert code == 0 and len(out.split("\n")) == len(LINES) + 1, err


def test_cli_bad_prefix_files(workdirs, tmp_path, capsys):
    first = workdirs[0]
    (tmp_path / "input.txt").write_text("a\nb\nc\n")
    (tmp_path / "short.txt").write_text("1\n2\n")
    code, _, err = run_cli(["translate", "--workdir", first, "--input", tmp_path / "input.txt", "--prefix",
                            tmp_path / "short.txt"], capsys)
    assert code == 2 and "short.txt has 2 lines" in err and "input.txt has 3" in err and "line 3 of" in err
    # "b" allows ceil(1.5 * 2 + 10) = 13 tokens; a 14-character prefix is too long, one of 13 is not.
    (tmp_path / "long.txt").write_text("1\n" + "1" * 14 + "\n\n")
    code, _, err = run_cli(["translate", "--workdir", first, "--input", tmp_path / "input.txt", "--prefix",
                            tmp_path / "long.txt"], capsys)
    assert code == 2 and f"{tmp_path / 'long.txt'}:2:" in err and "14 target pieces" in err and "13" in err
    (tmp_path / "exact.txt").write_text("1\n" + "1" * 13 + "\n\n")
    code, out, err = run_cli(["translate", "--workdir", first, "--input", tmp_path / "input.txt", "--prefix",
                              tmp_path / "exact.txt"], capsys)
    assert code == 0 and out.split("\n")[1] == "1" * 13, err


def test_cli_score(workdirs, tmp_path, capsys):
    first, second, _ = workdirs
    sources = ["March 3, 2021", "", "14 July 1789", "  "]
    targets = ["2021-03-03", "", "1789-07-14", "1"]
    (tmp_path / "src").write_text("\n".join(sources) + "\n")
    (tmp_path / "tgt").write_text("\n".join(targets) + "\n")
    code, out, err = run_cli(["score", "--workdir", first, "--src", tmp_path / "src", "--tgt", tmp_path / "tgt"],
                             capsys)
    assert code == 0, err
    rows = [line.split("\t") for line in out.splitlines()]
    assert len(rows) == len(sources) and all(len(row) == 3 for row in rows)
    assert [int(row[2]) for row in rows] == [len(t) + 1 for t in targets]  # char pieces + EOS
    for log_prob, mean, count in rows:
        assert float(log_prob) < 0 and float(mean) == pytest.approx(float(log_prob) / int(count), abs=2e-6)
    api_scores = seq2seq_jax.load(first).score(sources, targets)
    assert [float(row[0]) for row in rows] == pytest.approx([s.log_prob for s in api_scores], abs=1e-6)
    total, pieces = sum(s.log_prob for s in api_scores), sum(s.count for s in api_scores)
    assert "perplexity" in err and f"{np.exp(-total / pieces):.4f}" in err
    code, out, err = run_cli(["score", "--workdir", first, "--workdir", second, "--src", tmp_path / "src", "--tgt",
                              tmp_path / "tgt", "--json", "--output", tmp_path / "scores.jsonl"], capsys)
    assert code == 0 and out == "", err
    records = [json.loads(line) for line in (tmp_path / "scores.jsonl").read_text().splitlines()]
    assert len(records) == len(sources) and set(records[0]) == {"log_prob", "mean", "count"}
    assert json.loads(err.strip().splitlines()[-1])["pairs"] == len(sources)
    (tmp_path / "tgt3").write_text("a\nb\nc\n")
    code, _, err = run_cli(["score", "--workdir", first, "--src", tmp_path / "src", "--tgt", tmp_path / "tgt3"],
                           capsys)
    assert code == 2 and "tgt3 has 3 lines" in err and "src has 4" in err and "line 4 of" in err


def test_cli_evaluate_ensemble_and_tokenizer_mismatch(workdirs, tmp_path, capsys):
    first, second, other = workdirs
    (tmp_path / "src").write_text("March 3, 2021\n14 July 1789\n")
    (tmp_path / "ref").write_text("2021-03-03\n1789-07-14\n")
    code, out, err = run_cli(["evaluate", "--workdir", first, "--workdir", second, "--src", tmp_path / "src",
                              "--ref", tmp_path / "ref", "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["step"] == [4, 4] and result["perplexity"] > 1.0 and result["perplexity_pairs"] == 2
    code, _, err = run_cli(["score", "--workdir", first, "--workdir", other, "--src", tmp_path / "src", "--tgt",
                            tmp_path / "ref"], capsys)
    assert code == 2 and str(first) in err and str(other) in err and "tgt tokenizer" in err


def test_torch_ref_ensemble_translate_and_score_match_jax(workdirs, tmp_path, capsys):
    first, second, _ = workdirs
    exports = [export_torch(workdir, tmp_path / f"export{index}") for index, workdir in enumerate((first, second))]
    (tmp_path / "input.txt").write_text("\n".join(LINES) + "\n")
    (tmp_path / "prefix.txt").write_text("\n".join(PREFIXES) + "\n")
    settings = ["--beam-size", "3", "--n-best", "2", "--one-line-per-input", "--input", tmp_path / "input.txt",
                "--prefix", tmp_path / "prefix.txt"]
    code, jax_out, err = run_cli(["translate", "--workdir", first, "--workdir", second, *settings], capsys)
    assert code == 0, err
    assert torch_translate.main([str(e) for e in exports] + [str(s) for s in settings]
                                + ["--output", str(tmp_path / "torch.txt")]) == 0
    jax_rows = [line.split("\t") for line in jax_out.splitlines()]
    torch_rows = [line.split("\t") for line in (tmp_path / "torch.txt").read_text().splitlines()]
    assert [row[0::2] for row in torch_rows] == [row[0::2] for row in jax_rows]
    np.testing.assert_allclose([float(x) for row in torch_rows for x in row[1::2]],
                               [float(x) for row in jax_rows for x in row[1::2]], atol=1e-4)
    (tmp_path / "tgt.txt").write_text("\n".join(row[0] for row in jax_rows) + "\n")
    pair_args = ["--src", tmp_path / "input.txt", "--tgt", tmp_path / "tgt.txt", "--json"]
    code, jax_scores, err = run_cli(["score", "--workdir", first, "--workdir", second, *pair_args], capsys)
    assert code == 0, err
    assert torch_score.main([str(e) for e in exports] + [str(a) for a in pair_args]) == 0
    torch_scores = capsys.readouterr().out
    ours = [json.loads(line)["log_prob"] for line in jax_scores.splitlines()]
    theirs = [json.loads(line)["log_prob"] for line in torch_scores.splitlines()]
    assert len(ours) == len(LINES)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)


def test_package_top_and_torch_side_stay_jax_free():
    """``import seq2seq_jax`` (load is lazy), the score format module and torch_ref's ensemble and score modules
    import no JAX."""
    import subprocess

    code = ("import sys, seq2seq_jax, seq2seq_jax.core.pair_scores, torch_ref.ensemble, torch_ref.score, "
            "torch_ref.translate; print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'flax')))")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120,
                               env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"
    assert callable(seq2seq_jax.load)
