"""Fine-tuning: a new run that starts from another workdir's parameters (``seq2seq train --init-from W``).

The new run takes the source's tokenizers (copied into its workdir before its corpus is made) and must have the
source's model; it gets a fresh optimizer state and counts steps from 0, on its own data and training settings.
A model field or tokenizer setting that differs from the source's is refused with an error naming it, except the
fields of ``ADDED_MODEL_FIELDS``, which a fine-tuning run may turn on: their new parameters start at zero, so the
run starts from the source's function (coverage added in a short final phase, as See et al. 2017 trained it).
Once the new workdir has a checkpoint of its own, a rerun resumes that and the source is not read again.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import jax.numpy as jnp
from flax import traverse_util

from seq2seq_jax.core.config import ConfigError, ExperimentConfig
from seq2seq_jax.core.tokenizer import SIDE_NAMES, load_tokenizers, same_tokenizer
from seq2seq_jax.training.steps import abstract_params
from seq2seq_jax.training.workdir import Workdir, load_trained

# The data settings that decide what a tokenizer is: they must be the source's, since its tokenizers are used.
TOKENIZER_FIELDS = ("tokenizer", "vocab_size", "min_freq", "max_vocab_size", "joint_vocab", "character_coverage",
                    "user_symbols")
# Model settings that change no parameter: a fine-tuning run may set its own.
FREE_MODEL_FIELDS = ("embed_dropout", "rnn_dropout", "readout_dropout", "compute_dtype")
# Model settings a fine-tuning run may turn on, with the parameters each adds (paths in the parameter tree):
# they start at zero, where the model computes what the source's does.
ADDED_MODEL_FIELDS = {"coverage_attention": (("attention", "coverage_proj", "kernel"),)}


@dataclasses.dataclass(frozen=True)
class InitFrom:
    """Where a fine-tuning run's parameters come from: a trained workdir (one made by ``import-torch`` too) and
    which of its checkpoints (``"best"``, ``"latest"`` or a step)."""

    workdir: Path
    checkpoint: str | int = "best"

    def source(self) -> Workdir:
        run = Workdir(Path(self.workdir))
        if not run.exists():
            raise ConfigError(f"--init-from {self.workdir}: not a trained workdir ({run.config_path} not found)")
        return run


def _merged(source, ours, default, names):
    """``source`` with the fields among ``names`` that ``ours`` sets to other than ``default``'s value."""
    return dataclasses.replace(source, **{name: getattr(ours, name) for name in names
                                          if getattr(ours, name) != getattr(default, name)})


def config_from_source(init_from: InitFrom, config: ExperimentConfig) -> ExperimentConfig:
    """``config`` with the source's model and tokenizer settings wherever ``config`` leaves them at their
    defaults: a command line that names no model trains the source's."""
    source, default = init_from.source().load_config(), ExperimentConfig()
    model = _merged(source.model, config.model, default.model, [f.name for f in dataclasses.fields(source.model)])
    tokenizer = _merged(source.data, config.data, default.data, TOKENIZER_FIELDS)
    data = dataclasses.replace(config.data, **{name: getattr(tokenizer, name) for name in TOKENIZER_FIELDS})
    return dataclasses.replace(config, model=model, data=data)


def check_compatible(init_from: InitFrom, config: ExperimentConfig) -> None:
    """Refuse a ``config`` whose parameters or tokenizers would differ from the source's, naming the field."""
    source = init_from.source().load_config()
    for field in dataclasses.fields(source.model):
        ours, theirs = getattr(config.model, field.name), getattr(source.model, field.name)
        if field.name in FREE_MODEL_FIELDS or (field.name.endswith("_vocab_size") and not ours):
            continue  # vocabulary sizes are filled in from the tokenizers, which are the source's
        if field.name in ADDED_MODEL_FIELDS and ours and not theirs:
            continue  # turned on: its parameters start at zero (with_added_parameters)
        if ours != theirs:
            raise ConfigError(f"--init-from {init_from.workdir}: model.{field.name} is {ours!r} here but "
                              f"{theirs!r} in the source; a fine-tuning run keeps the source's model")
    for name in TOKENIZER_FIELDS:
        if getattr(config.data, name) != getattr(source.data, name):
            raise ConfigError(f"--init-from {init_from.workdir}: data.{name} is {getattr(config.data, name)!r} "
                              f"here but {getattr(source.data, name)!r} in the source; a fine-tuning run uses the "
                              "source's tokenizers")


def take_tokenizers(init_from: InitFrom, run: Workdir) -> None:
    """Copy the source's tokenizers into ``run`` (which then preprocesses its data with them); a workdir that
    already has other tokenizers is refused, naming the side."""
    source = init_from.source()
    if (run.tokenizer_dir / "src.tokenizer.json").is_file():
        for side, ours, theirs in zip(SIDE_NAMES, load_tokenizers(run.tokenizer_dir),
                                      load_tokenizers(source.tokenizer_dir), strict=True):
            if not same_tokenizer(ours, theirs):
                raise ConfigError(f"--init-from {init_from.workdir}: the {side} tokenizer of {run.path} differs "
                                  "from the source's; fine-tune into a new --workdir")
        return
    shutil.copytree(source.tokenizer_dir, run.tokenizer_dir, dirs_exist_ok=True)


def source_params(init_from: InitFrom, config: ExperimentConfig) -> tuple[int, dict]:
    """``(step, parameters of config's model)`` from the source's checkpoint, on the host's default device: the
    source's, with the ones ``config`` adds at zero (``ADDED_MODEL_FIELDS``)."""
    trained = load_trained(init_from.workdir, init_from.checkpoint)
    return trained.step, with_added_parameters(trained.params, config)


def with_added_parameters(params: dict, config: ExperimentConfig) -> dict:
    """``params`` (a nested dict) completed to ``config``'s model: each parameter it lacks that a turned-on
    field of ``ADDED_MODEL_FIELDS`` adds, as zeros of its shape and dtype; any other difference is an error."""
    added = {path for field, paths in ADDED_MODEL_FIELDS.items() if getattr(config.model, field) for path in paths}
    target = traverse_util.flatten_dict(abstract_params(config.model)[1])
    source = traverse_util.flatten_dict(params)
    extra = [key for key in source if key not in target]
    if extra:
        raise ConfigError(f"--init-from: the source has parameter {'/'.join(map(str, extra[0]))} that this model "
                          "has not")
    completed = {}
    for key, leaf in target.items():
        if key in source:
            completed[key] = source[key]
        elif tuple(map(str, key)) in added:
            completed[key] = jnp.zeros(leaf.shape, leaf.dtype)
        else:
            raise ConfigError(f"--init-from: the source lacks parameter {'/'.join(map(str, key))}")
    return traverse_util.unflatten_dict(completed)
