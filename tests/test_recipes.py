"""The recipes' settings: every config file loads, and every recipe names its files and search consistently.

The recipes themselves train for an hour on real corpora (scripts/recipes/run.py); tests never read the corpora.
"""

from __future__ import annotations

import importlib.util
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
