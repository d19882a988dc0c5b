"""A run's working directory: its layout, its resolved config, its tokenizers and its trained parameters.

Layout::

    W/config.json       the resolved ExperimentConfig (vocabulary sizes filled in)
    W/tokenizer/        src.* and tgt.* tokenizer files
    W/checkpoints/      orbax checkpoints (seq2seq_jax.training.checkpoint): params, optimizer state, step, rng,
                        data-iterator state
    W/metrics.jsonl     one JSON object per logged step / validation
    W/tensorboard/      the same metrics for TensorBoard
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
from flax import nnx

from seq2seq_jax.core.config import ExperimentConfig
from seq2seq_jax.core.tokenizer import load_tokenizers
from seq2seq_jax.decoding.loaded_model import TrainedModel
from seq2seq_jax.training.checkpoint import Checkpointer, CheckpointError
from seq2seq_jax.training.steps import TrainState, abstract_params, init_model, init_train_state, make_optimizer


@dataclasses.dataclass(frozen=True)
class Workdir:
    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def tokenizer_dir(self) -> Path:
        return self.path / "tokenizer"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / "tensorboard"

    def exists(self) -> bool:
        return self.config_path.is_file()

    def load_config(self) -> ExperimentConfig:
        if not self.exists():
            raise FileNotFoundError(f"{self.config_path} not found: {self.path} is not a trained workdir "
                                    "(run `seq2seq train --workdir` first)")
        return ExperimentConfig.load(self.config_path)

    def checkpointer(self, config: ExperimentConfig) -> Checkpointer:
        return Checkpointer(self.path, keep=config.train.keep_checkpoints, best_metric=config.train.best_metric,
                            best_mode=config.train.best_mode)


def fresh_train_state(config: ExperimentConfig) -> tuple[nnx.GraphDef, TrainState]:
    """A newly initialised model and optimizer state for ``config`` (also the restore target's structure)."""
    graphdef, params = init_model(config.model, config.train.seed)
    return graphdef, init_train_state(params, make_optimizer(config.train), config.train.seed)


def abstract_train_state(config: ExperimentConfig) -> tuple[nnx.GraphDef, TrainState]:
    """``fresh_train_state``'s graph definition and the shapes and dtypes of its state
    (``jax.ShapeDtypeStruct`` leaves): a restore target, traced once, nothing computed or allocated."""
    graphdef, params = abstract_params(config.model)
    optimizer = make_optimizer(config.train)
    return graphdef, jax.eval_shape(lambda p: init_train_state(p, optimizer, config.train.seed), params)


def load_trained(workdir: str | Path, checkpoint: str | int = "best") -> TrainedModel:
    """Parameters of ``checkpoint`` (``"best"``, ``"latest"`` or a step) with config and tokenizers.

    ``"best"`` falls back to the latest checkpoint when no validation metric was ever recorded.
    """
    run = Workdir(Path(workdir))
    config = run.load_config()
    src_tokenizer, tgt_tokenizer = load_tokenizers(run.tokenizer_dir)
    graphdef, abstract = abstract_train_state(config)
    with run.checkpointer(config) as checkpoints:
        if checkpoints.latest_step() is None:
            raise CheckpointError(f"{run.path / 'checkpoints'} holds no checkpoint")
        which: str | int | None = checkpoint
        if checkpoint == "latest" or (checkpoint == "best" and checkpoints.best_step() is None):
            which = None
        step, state, _ = checkpoints.restore(which, target=abstract)
        metrics = checkpoints.step_metrics(step)
    return TrainedModel(config, graphdef, state.params, src_tokenizer, tgt_tokenizer, int(step), metrics)
