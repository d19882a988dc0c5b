"""Start-up: each command imports only what it uses (``python -X importtime`` lists every module imported)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from run_support import tiny_config

from seq2seq_jax.training.trainer import train

ROOT = Path(__file__).resolve().parents[1]
NOT_FOR_DECODING = {"tensorboardX", "matplotlib", "grain", "sacrebleu", "fastapi", "uvicorn", "rouge_score",
                    "array_record", "torch"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = tmp_path_factory.mktemp("lean") / "run"
    train(tiny_config("train.max_steps=2"), path)
    return path


def imported_modules(*args: str, stdin: str = "") -> set[str]:
    """The top-level packages ``python -m seq2seq_jax ARGS`` imports."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SEQ2SEQ_JAX_CACHE_DIR": "off"}
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "seq2seq_jax", *args], input=stdin,
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")]
    return {name.split(".")[0] for name in lines[1:]}


def test_translate_imports_no_training_evaluation_or_serving_library(workdir):
    modules = imported_modules("translate", "--workdir", str(workdir), stdin="March 3, 2021\n")
    assert "jax" in modules and not modules & NOT_FOR_DECODING, sorted(modules & NOT_FOR_DECODING)


@pytest.mark.parametrize("args", [["--help"], ["config", "--preset", "small"], ["config", "--describe"]],
                         ids=" ".join)
def test_help_and_config_import_no_framework(args):
    modules = imported_modules(*args)
    heavy = {"jax", "flax", "optax", "orbax"} | NOT_FOR_DECODING
    assert not modules & heavy, sorted(modules & heavy)
