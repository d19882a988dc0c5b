"""The command line's options, without training anything: every option of every subcommand has a help text,
the decoding flags are one definition shared with ``torch_ref.translate``, ``seq2seq config`` prints resolved
configs and describes every field, bad values are refused early with the valid ones named, and an install
hint fits how the package is installed."""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path

import pytest

from seq2seq_jax import __version__, cli
from seq2seq_jax.core import install_hint
from seq2seq_jax.core.config import ExperimentConfig
from seq2seq_jax.core.decode_flags import SAMPLING_FIELDS, SEARCH_FIELDS
from seq2seq_jax.core.field_docs import describe_fields
from seq2seq_jax.core.presets import PRESETS
from torch_ref import translate as torch_translate

REPO = Path(__file__).resolve().parents[1]


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices) if actions else {}


def options_without_help(parser: argparse.ArgumentParser) -> list[str]:
    return [action.option_strings[-1] if action.option_strings else action.dest for action in parser._actions
            if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction))
            and not (action.help and action.help.strip())]


def test_every_option_of_every_command_has_help():
    parser = cli.build_parser()
    missing = {"seq2seq": options_without_help(parser)}
    for name, command in subparsers(parser).items():
        missing[name] = options_without_help(command)
    missing["torch_ref.translate"] = options_without_help(torch_translate.build_parser())
    assert not {name: found for name, found in missing.items() if found}
    assert set(subparsers(parser)) == set(cli.HANDLERS)  # and every command has its handler


def test_every_command_describes_itself_and_shows_its_defaults():
    parser = cli.build_parser()
    assert "your own" in parser.description and "docs/tutorial.md" in parser.description
    for name, command in subparsers(parser).items():
        assert command.description and command.description.strip(), name
        text = command.format_help()
        for action in command._actions:
            if action.option_strings and action.default not in (None, False, argparse.SUPPRESS) \
                    and not isinstance(action, argparse._HelpAction):
                entry = command._get_formatter()._get_help_string(action)
                assert "default" in entry, (name, action.option_strings)
        assert "(default: best)" in text or "--checkpoint" not in text, name


def test_the_walk_catches_an_option_without_help():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quiet", action="store_true")
    assert options_without_help(parser) == ["--quiet"]


def flags(parser: argparse.ArgumentParser) -> dict[str, tuple]:
    return {action.option_strings[-1]: (action.type, action.default, action.help) for action in parser._actions
            if action.option_strings}


def test_decode_flags_are_one_definition_on_both_sides():
    translate = flags(subparsers(cli.build_parser())["translate"])
    torch_side = flags(torch_translate.build_parser())
    search = ["--" + name.replace("_", "-") for name in SEARCH_FIELDS]
    sampling = ["--" + name.replace("_", "-") for name in SAMPLING_FIELDS]
    assert {flag: translate[flag] for flag in search} == {flag: torch_side[flag] for flag in search}
    assert set(sampling) <= set(translate) and not set(sampling) & set(torch_side)
    args = torch_translate.build_parser().parse_args(["DIR", "--beam-size", "4", "--length-penalty", "0.5"])
    assert (args.beam_size, args.length_penalty, args.n_best) == (4, 0.5, None)  # None: the export's setting


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"seq2seq-jax {__version__}"


def run(args, capsys):
    code = cli.main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_config_prints_a_preset_complete_with_set_applied(name, capsys):
    code, out, _ = run(["config", "--preset", name, "--set", "decode.beam_size=3"], capsys)
    printed = json.loads(out)
    assert code == 0 and set(printed) == {"model", "data", "train", "decode"}
    assert sum(len(section) for section in printed.values()) == len(describe_fields())  # every field
    assert ExperimentConfig.from_dict(printed) == ExperimentConfig.from_preset(name).with_overrides(
        ["decode.beam_size=3"])


def test_config_of_a_file_over_a_preset_and_of_a_workdir(tmp_path, capsys):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"model": {"enc_layers": 3}}))
    code, out, _ = run(["config", "--preset", "translation", "--config", path], capsys)
    config = ExperimentConfig.from_dict(json.loads(out))
    assert code == 0 and config.model.enc_layers == 3 and config.model.decoder_style == "luong"
    (tmp_path / "W").mkdir()
    config.save(tmp_path / "W" / "config.json")
    code, out, _ = run(["config", "--workdir", tmp_path / "W", "--set", "train.max_steps=7"], capsys)
    assert code == 0 and ExperimentConfig.from_dict(json.loads(out)).train.max_steps == 7
    code, _, err = run(["config", "--workdir", tmp_path / "W", "--preset", "small"], capsys)
    assert code == 2 and "no --config or --preset" in err


def test_config_describe_lists_every_field(capsys):
    code, out, _ = run(["config", "--describe"], capsys)
    lines = out.splitlines()
    assert code == 0 and len(lines) == len(describe_fields())
    beam = next(line for line in lines if line.startswith("decode.beam_size "))
    assert beam.split()[:3] == ["decode.beam_size", "int", "1"] and "greedy" in beam


def test_bad_values_are_refused_naming_the_valid_ones(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["translate", "--workdir", str(tmp_path), "--checkpoint", "bset"])
    assert "'bset' is not a checkpoint: use best, latest or a step number" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["train", "--workdir", str(tmp_path / "W"), "--preset", "translaton"])
    assert "invalid choice: 'translaton'" in capsys.readouterr().err
    code, _, err = run(["config", "--set", "decode.beam=5"], capsys)
    assert code == 2 and "did you mean 'decode.beam_size'" in err


def test_interactive_with_a_file_is_refused_before_loading_anything(tmp_path, capsys):
    code, _, err = run(["translate", "--workdir", tmp_path / "missing", "--interactive", "--input", "in.txt"], capsys)
    assert code == 2 and "--interactive reads stdin" in err and "--input" in err and "config.json" not in err


def test_install_hint_fits_a_checkout_or_an_installed_package(monkeypatch, tmp_path):
    assert install_hint.checkout_root() == REPO  # the tests import this checkout
    monkeypatch.chdir(REPO)
    assert install_hint.install_command("jax") == 'pip install -e ".[jax]"'
    monkeypatch.chdir(tmp_path)
    assert install_hint.install_command("torch") == f'pip install -e "{REPO}[torch]"'
    monkeypatch.setattr(install_hint, "checkout_root", lambda: None)
    assert install_hint.install_command("jax") == "pip install 'seq2seq-jax[jax]'"


def test_the_command_line_code_stays_in_small_functions():
    for name in ("cli.py", "cli_parser.py"):
        source = (REPO / "seq2seq_jax" / name).read_text(encoding="utf-8")
        long = [(node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(ast.parse(source))
                if isinstance(node, ast.FunctionDef) and node.end_lineno - node.lineno + 1 > 80]
        assert not long and source.count("\n") < 500, (name, long)
