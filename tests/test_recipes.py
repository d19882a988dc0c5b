"""The recipes' settings: every config file loads, and every recipe names its files and search consistently.

The recipes themselves train for an hour on real corpora (scripts/recipes/run.py); tests never read the corpora.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from seq2seq_jax.config import DecodeConfig, ExperimentConfig

RECIPE_DIR = Path(__file__).resolve().parents[1] / "scripts" / "recipes"


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
    assert (recipe.test is None) == (recipe.metric == "rouge")


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
