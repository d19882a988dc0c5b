"""The recipes' settings: every config file loads, and every recipe names its files and search consistently.

The recipes themselves train for an hour on real corpora (scripts/recipes/run.py); tests never read the corpora.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from seq2seq_jax.core.config import DecodeConfig, ExperimentConfig
from seq2seq_jax.core.presets import PRESETS

RECIPE_DIR = Path(__file__).resolve().parents[1] / "scripts" / "recipes"
# Every field of each recipe's config as the recipe's results were measured with (written out in full before the
# recipe files became a preset and its changes): what a recipe file resolves to must stay exactly this.
MEASURED_CONFIGS = Path(__file__).resolve().parent / "recipe_configs"


def _runner():
    spec = importlib.util.spec_from_file_location("recipe_runner", RECIPE_DIR / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


RUNNER = _runner()


@pytest.mark.parametrize("name", sorted(RUNNER.RECIPES))
def test_recipe_config_loads_and_search_is_valid(name):
    recipe = RUNNER.RECIPES[name]
    config = ExperimentConfig.load(RECIPE_DIR / recipe.config)
    assert config.train.best_metric == "valid_bleu"
    assert config.train.max_steps % config.train.save_every == 0  # the last checkpoints are evenly spaced
    for key, values in recipe.search.items():
        for value in values:  # every searched setting is a valid decode config
            DecodeConfig(**{**config.decode.to_dict(), "beam_size": recipe.beam_size, key: value})
    assert recipe.metric in ("bleu", "rouge")
    # a test set is scored once, unless the recipe reports its validation sets (summarization, data-to-text)
    assert (recipe.test is None) == (recipe.metric == "rouge" or recipe.valid_sets is not None)


@pytest.mark.parametrize("name", sorted(RUNNER.RECIPES))
def test_recipe_is_a_preset_and_resolves_to_the_config_it_was_measured_with(name):
    recipe = RUNNER.RECIPES[name]
    assert json.loads((RECIPE_DIR / recipe.config).read_text())["preset"] in PRESETS
    measured = ExperimentConfig.from_dict(json.loads((MEASURED_CONFIGS / recipe.config).read_text()))
    assert ExperimentConfig.load(RECIPE_DIR / recipe.config) == measured


def test_a_missing_corpus_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="multi30k/train.de not found"):
        RUNNER.run("multi30k-de-en", tmp_path, tmp_path / "run", tmp_path / "results")
    assert not (tmp_path / "run").exists()


def test_summary_tables_show_measured_scores_beside_targets_and_baselines(tmp_path):
    common = {"environment": {"commit": "abc1234", "date": "2026-11-28T20:00:00+00:00", "cpus_usable": 1,
                              "versions": {"jax": "0.10.2"}},
              "training": {"steps": 3000, "seconds": 4500.0, "tokens_per_s_median": 583.2},
              "config": {"data": {"batch_size": 64}},
              "model_selection": {"chosen": "average of last 4"},
              "decode_search": {"chosen": {"beam_size": 5, "length_penalty": 1.0}}}
    translation = dict(common, recipe="multi30k-de-en", command="python scripts/recipes/run.py multi30k-de-en",
                       test={"set": "multi30k/test_2016_flickr.en", "bleu": 33.41, "chrf": 58.07,
                             "bleu_signature": "nrefs:1|case:mixed", "chrf_signature": "nrefs:1|nc:6"},
                       published={"Transformer": 36.5})
    summary = dict(common, recipe="dialogsum", command="python scripts/recipes/run.py dialogsum",
                   valid={"rouge1": 33.33, "rouge2": 9.96, "rougeL": 27.04},
                   baselines={"Lead-3": {"rouge1": 28.36, "rouge2": 7.8, "rougeL": 21.47}})
    for report in (translation, summary):
        (tmp_path / f"{report['recipe']}.json").write_text(json.dumps(report))
    text = RUNNER.write_summary(tmp_path).read_text()
    assert "| this recipe, measured (multi30k/test_2016_flickr.en) | 33.4 | 58.1 |" in text
    assert "| target | 38.0 | |" in text and "| published: Transformer | 36.5 | |" in text
    assert "| this recipe, measured | 33.3 | 10.0 | 27.0 |" in text
    assert "| Lead-3 | 28.4 | 7.8 | 21.5 |" in text and "| target | 38.0 | 12.0 | 31.0 |" in text
    assert "3000 steps of 64 sentences in 75.0 min, median 583 target tokens/s" in text


class _FakeCheckpointer:
    def __init__(self, step):
        self.step = step

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return None

    def latest_step(self):
        return self.step


TRAIN_ARGV: list[list[str]] = []  # what the fake training of _fake_run was called with


def _fake_run(monkeypatch, tmp_path, name, reached=None, ensemble_seeds=None, select="validation", **options):
    """Run ``RUNNER.run`` (``RUNNER.run_ensemble`` with ``ensemble_seeds``) with training, averaging and decoding
    replaced by fakes (nothing compiles).

    Decoding "scores" are a known function of (model, settings), so the choices the runner makes can be checked.
    Returns ``(report, decoded, results)`` with ``decoded`` the list of (model dir name, settings) actually
    decoded (an ensemble's name joins its models' with "+").
    """
    from seq2seq_jax import cli
    from seq2seq_jax.training import averaging
    from seq2seq_jax.training import workdir as workdir_lib

    recipe = RUNNER.RECIPES[name]
    data = tmp_path / "data"
    lines = {"train": ["#Person1#: seen a. #Person2#: b.", "#Person1#: c. #Person2#: d."],
             "valid": ["#Person1#:  seen a. #Person2#: b.", "#Person1#: new e. #Person2#: f."],
             "test": ["x y", "z"]}
    if recipe.input_format == "triples":
        lines = dict.fromkeys(("train", "valid", "test"), ["A_x | bC | D", "A | b | C <TSP> E | f | G"])
    for split in ("train", "valid", "test"):
        pairs = RUNNER.directions(recipe, getattr(recipe, split)).values() if getattr(recipe, split) else ()
        for side, path in ((side, path) for pair in pairs for side, path in enumerate(pair)):
            (data / path).parent.mkdir(parents=True, exist_ok=True)
            (data / path).write_text("".join((line if side == 0 else f"ref {i}") + "\n"
                                             for i, line in enumerate(lines[split])))
    if recipe.valid_sets is not None:  # the sets' sources; ref1 full, ref2 for the second set only, the rest empty
        sources, references = recipe.valid_sets
        (data / sources).write_text("".join(line + "\n" for line in lines["valid"]))
        for k, path in enumerate(references):
            (data / path).write_text("".join((f"ref {i}" if k == 0 else f"second {i}" if k == 1 and i else "") + "\n"
                                             for i in range(len(lines["valid"]))))
    config = ExperimentConfig.load(RECIPE_DIR / recipe.config)
    workdir = tmp_path / "run"

    def fake_main(argv):
        TRAIN_ARGV.append(list(argv))
        run_dir = Path(argv[argv.index("--workdir") + 1])
        run_dir.mkdir()
        config.with_overrides([argv[i + 1] for i, flag in enumerate(argv) if flag == "--set"]).save(
            run_dir / "config.json")
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (
            {"step": 100, "train_loss": 5.0, "tokens_per_s": 100.0},
            {"step": 200, "train_loss": 4.0, "tokens_per_s": 300.0},
            {"step": 200, "valid_loss": 4.5, "valid_bleu": 10.0})))
        return 0

    decoded = []

    def fake_decode(model, decode, sources, refs, metric, bucket_width, tgt_lang=None):
        label = "+".join(m.name for m in model) if isinstance(model, tuple) else model.name
        decoded.append((label, dict(decode)) if tgt_lang is None else (label, dict(decode), tgt_lang))
        value = 10.0 * decode.get("length_penalty", 0.0) + (1.0 if label.endswith(".avg") else 0.0)
        if isinstance(model, tuple):  # the ensemble prefers length penalty 0.5
            value = 20.0 - abs(decode.get("length_penalty", 0.0) - 0.5) + len(model)
        value += decode.get("no_repeat_ngram_size", 0) / 8  # the largest size in the grid (4) adds 0.5
        value -= decode.get("min_len", 0) / 10
        value += {None: 0.0, "de": 0.0, "fr": 3.0, "cs": -3.0}[tgt_lang]  # a multilingual model's directions
        scores = ({"rouge1": value, "rouge2": value, "rougeL": value, "score": value} if metric == "rouge" else
                  {"bleu": value, "chrf": value, "chrf_pp": value, "ter": 50.0, "bleu_signature": "s",
                   "chrf_signature": "c", "chrf_pp_signature": "cpp", "ter_signature": "t", "score": value})
        return scores, [ref if isinstance(ref, str) else ref[0] for ref in refs], 0.1

    monkeypatch.setattr(cli, "main", fake_main)
    monkeypatch.setattr(averaging, "average_checkpoints", lambda *args, **kwargs: [])
    monkeypatch.setattr(workdir_lib.Workdir, "checkpointer",
                        lambda self, cfg: _FakeCheckpointer(config.train.max_steps if reached is None else reached))
    monkeypatch.setattr(RUNNER, "decode_and_score", fake_decode)

    def fake_seconds(model, decode, sources, bucket_width):
        decoded.append(("speed " + ("+".join(m.name for m in model) if isinstance(model, tuple) else model.name),
                        dict(decode)))
        return {"first_seconds": 9.0, "compiled_seconds": 3.0 * (len(model) if isinstance(model, tuple) else 1)}

    monkeypatch.setattr(RUNNER, "decode_seconds", fake_seconds)
    results = tmp_path / "results"
    results.mkdir()
    if ensemble_seeds:
        return RUNNER.run_ensemble(name, data, workdir, results, ensemble_seeds, select=select), decoded, results
    return RUNNER.run(name, data, workdir, results, select=select, **options), decoded, results


def test_runner_selects_on_validation_and_scores_test_once(monkeypatch, tmp_path):
    report, decoded, results = _fake_run(monkeypatch, tmp_path, "multi30k-de-en")
    assert report["model_selection"]["chosen"].startswith("average")
    assert report["decode_search"]["chosen"]["length_penalty"] == 1.5  # the largest value scores best here
    assert report["test"]["bleu"] == pytest.approx(16.0)  # 10 * 1.5 + 1 (average), from the test decode
    # Every (model, settings) decoded once on validation: 2 candidates + 3 more penalties (penalty 0 is the
    # candidate's own decode); then the test set once.
    assert len(decoded) == 6 and len({json.dumps(d, sort_keys=True) for d in decoded[:-1]}) == 5
    assert json.loads((results / "multi30k-de-en.json").read_text())["training"]["steps"] == 200
    assert (results / "multi30k-de-en_curves.png").is_file() and (results / "README.md").is_file()
    assert (results / "multi30k-de-en.test.hyp").read_text() == "ref 0\nref 1\n"


def test_a_validation_only_trial_never_decodes_the_test_set(monkeypatch, tmp_path):
    """A trial with two averaging windows: one candidate per window, validation decodes only, and a row of the
    summary's trial table naming what it changed against the recipe's own run."""
    report, decoded, results = _fake_run(monkeypatch, tmp_path, "multi30k-de-en", validation_only=True,
                                         label="trial-lp", overrides=["data.subword_alpha=0.1"], average_windows=(2, 4))
    assert "test" not in report and report["validation_only"] is True
    assert set(report["model_selection"]["candidates"]) == {"best checkpoint", "average of last 2",
                                                            "average of last 4"}
    assert len(decoded) == 6  # 3 candidates + 3 more penalties on validation, no test decode
    assert report["command"] == ("python scripts/recipes/run.py multi30k-de-en --set data.subword_alpha=0.1 "
                                 "--average-window 2 --average-window 4 --validation-only --label trial-lp")
    assert report["config"]["data"]["subword_alpha"] == 0.1
    assert (results / "trial-lp.json").is_file() and not list(results.glob("*.hyp"))
    baseline = {**report, "label": "multi30k-de-en", "validation_only": False,
                "command": "python scripts/recipes/run.py multi30k-de-en"}
    (results / "multi30k-de-en.json").write_text(json.dumps(baseline))
    table = RUNNER.write_summary(results).read_text().split("## Trials of multi30k-de-en on validation")[1]
    rows = [line for line in table.splitlines() if line.startswith("| multi30k-de-en") or line.startswith("| trial")]
    assert len(rows) == 2 and "(the recipe)" in rows[0]
    assert "| `data.subword_alpha=0.1`, `--average-window 2`, `--average-window 4` |" in rows[1]
    assert "average of last 2 0.00; average of last 4 1.00" in rows[1]  # .avg2 has not the fake's ".avg" bonus
    with pytest.raises(ValueError, match="keeps 4 checkpoints"):
        RUNNER.run("multi30k-de-en", tmp_path / "data", tmp_path / "run5", results, average_windows=(5,))


def test_a_fine_tuning_trial_starts_from_the_workdir_it_names(monkeypatch, tmp_path):
    """``--init-from W``: the new workdir's training gets ``--init-from W`` (a resumed one would not), and the
    record and the trial table say so."""
    source = tmp_path / "trained"
    report, _, results = _fake_run(monkeypatch, tmp_path, "dialogsum", validation_only=True, label="trial-phase",
                                   overrides=["model.coverage_attention=true"], init_from=source)
    argv = TRAIN_ARGV[-1]
    assert argv[argv.index("--init-from") + 1] == str(source) and report["init_from"] == str(source)
    assert report["command"].endswith(f"--validation-only --label trial-phase --init-from {source}")
    table = RUNNER.write_summary(results).read_text()
    assert f"`model.coverage_attention=true`, `--init-from {source}`" in table
    with pytest.raises(SystemExit):
        RUNNER.main(["dialogsum", "--init-from", str(source), "--ensemble-seed", "1"])


def test_runner_summarization_reports_unseen_subset_and_baselines(monkeypatch, tmp_path):
    report, _, _ = _fake_run(monkeypatch, tmp_path, "dialogsum")
    assert report["decode_search"]["chosen"] == {"beam_size": 5, "n_best": 1, "no_repeat_ngram_size": 4,
                                                 "length_penalty": 1.0, "min_len": 0}
    assert report["valid"]["rouge1"] == pytest.approx(11.5)
    assert report["valid_unseen"]["examples"] == 1  # the first valid dialogue is a train dialogue (whitespace aside)
    assert set(report["baselines"]) == {"Lead-3", "Longest-3"}
    assert "test" not in report


def test_runner_data_to_text_linearizes_and_scores_every_reference(monkeypatch, tmp_path):
    """webnlg: the sources are linearized before training and decoding; steps 2-4 score dev_sets with all of a
    set's references (the empty lines of the higher refN files left out), by triple count too."""
    report, decoded, results = _fake_run(monkeypatch, tmp_path, "webnlg")
    trained_on = Path(TRAIN_ARGV[-1][TRAIN_ARGV[-1].index("--train-src") + 1]).read_text(encoding="utf-8")
    assert trained_on == "<S> A x <P> b c <O> D\n<S> A <P> b <O> C <S> E <P> f <O> G\n"
    assert report["decode_search"]["chosen"]["length_penalty"] == 2.0  # the largest value scores best here
    assert report["valid"]["set"] == "webnlg/dev_sets.src" and "test" not in report
    assert set(report["valid_by_triple_count"]) == {"1", "2"}
    assert [sample["references"] for sample in report["samples"]] == [["ref 0"], ["ref 1", "second 1"]]
    assert report["samples"][0]["source"] == "<S> A x <P> b c <O> D"
    summary = (results / "README.md").read_text()
    assert "multi-reference" in summary and "| triples | sets | BLEU | chrF++ |" in summary


def test_runner_refuses_a_run_stopped_early(monkeypatch, tmp_path):
    with pytest.raises(RuntimeError, match="stopped at step 150"):
        _fake_run(monkeypatch, tmp_path, "multi30k-de-en", reached=150)
    assert len(json.loads((tmp_path / "run" / "recipe_training_seconds.json").read_text())) == 1  # its time counts


def test_runner_ensemble_step(monkeypatch, tmp_path):
    """--ensemble-seed 5: the recipe runs again with train.seed=5, then both chosen models decode as one ensemble,
    its length penalty chosen on validation, test scored once by the ensemble and once by the first model alone
    (decode speed)."""
    report, decoded, results = _fake_run(monkeypatch, tmp_path, "multi30k-en-de", ensemble_seeds=[5])
    assert ExperimentConfig.load(tmp_path / "run.seed5" / "config.json").train.seed == 5
    assert [m["label"] for m in report["members"]] == ["multi30k-en-de", "multi30k-en-de-seed5"]
    assert [m["model"] for m in report["members"]] == [str(tmp_path / "run.avg"), str(tmp_path / "run.seed5.avg")]
    assert report["members"][0]["test"]["bleu"] == pytest.approx(16.0)
    ensemble = "run.avg+run.seed5.avg"
    assert report["decode_search"]["chosen"]["length_penalty"] == 0.5
    assert report["valid"]["bleu"] == pytest.approx(22.0) and report["test"]["bleu"] == pytest.approx(22.0)
    ensemble_decodes = [d for label, d in decoded if label == ensemble]
    assert len(ensemble_decodes) == 4 + 1  # four penalties on validation, then test once
    assert decoded[-2:] == [("speed " + ensemble, report["decode_search"]["chosen"]),
                            ("speed run.avg", report["decode_search"]["chosen"])]  # the speed comparison
    assert report["speed"]["sentences"] == 2 and report["speed"]["ensemble"]["compiled_seconds"] == 6.0
    assert "--workdir " + str(tmp_path / "run.avg") + " --workdir " + str(tmp_path / "run.seed5.avg") in (
        report["translate_command"])
    assert report["command"] == "python scripts/recipes/run.py multi30k-en-de --ensemble-seed 5"
    for label in ("multi30k-en-de", "multi30k-en-de-seed5", "multi30k-en-de-ensemble"):
        assert (results / f"{label}.json").is_file()
    summary = (results / "README.md").read_text()
    assert "## multi30k-en-de-seed5" in summary and "## multi30k-en-de-ensemble" in summary
    chosen = '`{"beam_size": 5, "length_penalty": 0.5, "n_best": 1}`'
    assert f"| ensemble of the 2 | {chosen} | 22.0 | 22.0 | 22.0 |" in summary
    assert "compiled: 6.0 s for the ensemble, 3.0 s for the first model alone" in summary
    with pytest.raises(ValueError, match="translation recipes"):
        RUNNER.run_ensemble("dialogsum", tmp_path, tmp_path / "x", results, [5])


def test_runner_select_average_skips_the_best_checkpoint(monkeypatch, tmp_path):
    """--select average: every run keeps its checkpoint average without scoring the best checkpoint; the members
    of an ensemble too."""
    report, decoded, _ = _fake_run(monkeypatch, tmp_path, "multi30k-en-de", ensemble_seeds=[5], select="average")
    assert {label for label, _ in decoded} == {"run.avg", "run.seed5.avg", "run.avg+run.seed5.avg",
                                               "speed run.avg+run.seed5.avg", "speed run.avg"}
    assert [m["selection"] for m in report["members"]] == ["average of last 4", "average of last 4"]
    assert report["command"] == "python scripts/recipes/run.py multi30k-en-de --ensemble-seed 5 --select average"


def test_runner_multilingual_recipe_trains_once_and_scores_each_direction(monkeypatch, tmp_path):
    """multi30k-en-x: one training from the config's corpora (their files under --data), every validation and the
    test decode once per target language with its --tgt-lang, the mean of the directions compared."""
    report, decoded, results = _fake_run(monkeypatch, tmp_path, "multi30k-en-x")
    argv = TRAIN_ARGV[-1]
    assert "--train-src" not in argv
    written = ExperimentConfig.load(argv[argv.index("--config") + 1])
    assert [c.src for c in written.data.corpora] == [str(tmp_path / "data" / "multi30k/train.en")] * 3
    assert written.data.languages == {"de": "<2de>", "fr": "<2fr>", "cs": "<2cs>"}
    assert {entry[2] for entry in decoded} == {"de", "fr", "cs"} and all(len(entry) == 3 for entry in decoded)
    assert len(decoded) == 3 * 6  # five validation decodes and the test, each in three directions
    assert report["decode_search"]["chosen"]["length_penalty"] == 1.5
    test = report["test"]
    assert test["bleu"] == pytest.approx(16.0)  # the mean of 16, 19 and 13
    assert {lang: entry["bleu"] for lang, entry in test["by_language"].items()} == pytest.approx(
        {"de": 16.0, "fr": 19.0, "cs": 13.0})
    assert test["by_language"]["fr"]["set"] == "multi30k/test_2016_flickr.fr"
    assert report["valid_chosen"]["by_language"]["cs"]["bleu"] == pytest.approx(13.0)
    for lang in ("de", "fr", "cs"):
        assert (results / f"multi30k-en-x.test.{lang}.hyp").read_text() == "ref 0\nref 1\n"
    summary = (results / "README.md").read_text()
    assert "| this recipe, fr (multi30k/test_2016_flickr.fr) | 19.0 | 19.0 |" in summary
    with pytest.raises(ValueError, match="bilingual translation recipes"):
        RUNNER.run_ensemble("multi30k-en-x", tmp_path, tmp_path / "x", results, [5])
