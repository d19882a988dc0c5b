"""Checkpoint averaging: the element-wise mean of the parameters of several checkpoints of one run.

Averaging the last few checkpoints of a run (Vaswani et al. 2017; ``average_models.py`` in OpenNMT-py,
``average_checkpoints.py`` in fairseq) usually gives a model a little better than any one of them. The result
is a new workdir (config, tokenizers, one checkpoint) that ``translate``, ``evaluate``, ``export-torch`` and
``train`` read like any other: its checkpoint holds the averaged parameters and, from the newest averaged
checkpoint, the optimizer state, step and data position.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from seq2seq_jax.core.tokenizer import tokenizer_files
from seq2seq_jax.training.checkpoint import CheckpointError
from seq2seq_jax.training.staging import StagingError, is_nonempty_dir, staged_directory
from seq2seq_jax.training.workdir import Workdir, fresh_train_state
from seq2seq_jax.training.workdir_lock import workdir_lock


def select_steps(available: Sequence[int], last: int | None = None, steps: Sequence[int] | None = None) -> list[int]:
    """The steps to average: the ``last`` newest of ``available``, or exactly ``steps`` (each must exist)."""
    available = sorted(available)
    if (last is None) == (steps is None):
        raise ValueError("give either last (the N newest checkpoints) or steps (a list), not both or neither")
    if steps is not None:
        missing = sorted(set(steps) - set(available))
        if missing:
            raise CheckpointError(f"no checkpoint for step(s) {missing}; available steps: {available}")
        return sorted(set(steps))
    if last < 1:
        raise ValueError(f"last must be >= 1, got {last}")
    if last > len(available):
        raise CheckpointError(f"asked to average the last {last} checkpoints but only {len(available)} exist "
                              f"(steps {available}); train.keep_checkpoints sets how many are kept")
    return available[-last:]


def average_params(trees: Sequence) -> object:
    """Element-wise mean of parameter pytrees of equal structure, summed in float64, cast back to each dtype."""
    if not trees:
        raise ValueError("nothing to average")

    def mean(*leaves):
        total = np.zeros(np.shape(leaves[0]), np.float64)
        for leaf in leaves:
            total += np.asarray(leaf, np.float64)
        return (total / len(leaves)).astype(np.asarray(leaves[0]).dtype)

    return jax.tree.map(mean, *trees)


def average_checkpoints(workdir: str | Path, out: str | Path, last: int | None = None,
                        steps: Sequence[int] | None = None) -> list[int]:
    """Write the workdir ``out`` whose one checkpoint averages ``workdir``'s chosen checkpoints.

    Returns the averaged steps. ``out`` must be new or empty; it appears complete or not at all. ``out`` is
    locked (``workdir_lock``) from the start; ``workdir`` is only read.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise StagingError(f"{out} exists and is not a directory; choose a new --out workdir")
    with workdir_lock(out, "seq2seq average"):
        return _average_into(Workdir(Path(workdir)), out, last, steps)


def _average_into(run: Workdir, out: Path, last: int | None, steps: Sequence[int] | None) -> list[int]:
    if is_nonempty_dir(out):
        raise StagingError(f"{out} exists and is not an empty directory; choose a new --out workdir")
    config = run.load_config()
    _, target = fresh_train_state(config)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), target)
    with run.checkpointer(config) as checkpoints:
        chosen = select_steps(checkpoints.all_steps(), last, steps)
        params = []
        for step in chosen:
            _, state, extra = checkpoints.restore(step, target=abstract)
            params.append(jax.tree.map(np.asarray, jax.device_get(state.params)))
    newest_state = state.replace(params=average_params(params))
    extra = dict(extra, averaged_from={"workdir": str(run.path.absolute()), "steps": chosen})
    extra.pop("best", None)
    with staged_directory(out) as temporary:
        staged = Workdir(temporary)
        staged.tokenizer_dir.mkdir()
        for path in tokenizer_files(run.tokenizer_dir):
            shutil.copy2(path, staged.tokenizer_dir / path.name)
        with staged.checkpointer(config) as saved:
            saved.save(chosen[-1], newest_state, extra=extra, force=True)
        config.save(staged.config_path)
    return chosen


__all__ = ["average_checkpoints", "average_params", "select_steps"]
