"""Checkpoints: save / restore / latest / best, with the data-iterator state, config and metrics beside the
arrays, in one orbax ``CheckpointManager`` under ``workdir/checkpoints`` (docs/checkpoints.md: the layout and
the guarantees). Only this module and ``checkpoint_policy`` import orbax.

Contract: the ``keep`` newest steps and the best by ``best_metric`` are kept; a state with a non-finite leaf
is refused before anything is written; an uncommitted (crashed) save is never restored; ``restore(None)``
falls back past unreadable checkpoints (moved to ``checkpoints_corrupt/``, with a warning naming both
steps); a checkpoint that does not fit the target, or a save that fails (a full disk said as such), raises
``CheckpointError`` naming the step, its directory and the last complete checkpoint.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import shutil
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from seq2seq_jax.training.checkpoint_policy import KeepLatestAndBest, preservation_policy_available
from seq2seq_jax.training.save_failures import is_disk_full, one_line

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
CORRUPT_DIR = "checkpoints_corrupt"
_STATE_ITEM = "state"
_EXTRA_ITEM = "extra"
_METRICS_ITEM = "step_metrics"
BEST_MODES = ("min", "max")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be saved or restored (disk full, missing, corrupt, or not matching the target)."""


def _is_floating(leaf: Any) -> bool:
    dtype = getattr(leaf, "dtype", None)
    if dtype is None:
        return isinstance(leaf, float)
    return bool(jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.complexfloating))


@jax.jit
def _leaves_finite(leaves: list[jax.Array]) -> jax.Array:
    """``[len(leaves)] bool``: whether each leaf is all finite, in one compiled program (not one eager program
    per leaf), fetched to the host in one transfer."""
    return jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves])


def _in_host_memory(leaf: Any) -> bool:
    """Whether numpy can read ``leaf`` where it lies: a host array, or a jax array held whole on CPU devices."""
    if not isinstance(leaf, jax.Array):
        return True
    return leaf.is_fully_addressable and all(device.platform == "cpu" for device in leaf.devices())


def find_nonfinite_leaf(state: Any) -> str | None:
    """Path (``jax.tree_util.keystr``) of the first floating leaf of ``state`` holding NaN/Inf, or None."""
    leaves_with_paths = jax.tree_util.tree_flatten_with_path(state)[0]
    floating = [(path, leaf) for path, leaf in leaves_with_paths if _is_floating(leaf)]
    if not floating:
        return None
    leaves = [leaf for _, leaf in floating]
    if all(_in_host_memory(leaf) for leaf in leaves):  # numpy reads them in place: no program at all
        all_finite = [bool(np.isfinite(np.asarray(leaf)).all()) for leaf in leaves]
    else:
        all_finite = jax.device_get(_leaves_finite(leaves))
    for (path, _), finite in zip(floating, all_finite, strict=True):
        if not bool(finite):
            return jax.tree_util.keystr(path) or "<root>"
    return None


def _as_restore_target(leaf: Any) -> Any:
    """A concrete ``jax.Array`` becomes its ``ShapeDtypeStruct`` (sharding kept); a ``ShapeDtypeStruct``
    without a sharding gets this process's first device (orbax would otherwise reuse the saved sharding, which
    fails on another topology: a checkpoint written on 8 devices, read by ``translate`` on 1); other leaves
    pass as is."""
    if isinstance(leaf, jax.Array):
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
    if isinstance(leaf, jax.ShapeDtypeStruct) and leaf.sharding is None:
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype,
                                    sharding=jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))
    return leaf


def _check_json(value: Any, what: str) -> None:
    try:
        json.dumps(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{what} must be JSON-serialisable (plain dict/list/str/int/float/"
                         f"bool/None; convert numpy scalars and arrays first): {error}") from None


class Checkpointer:
    """Save and restore training state under ``workdir/checkpoints`` (see the module docstring).

    Args:
      workdir: the experiment directory; checkpoints live in ``workdir/checkpoints``.
      keep: how many of the newest checkpoints to keep (>= 1); the best one is kept in addition.
      best_metric: key of ``metrics`` (given to ``save``) that ranks checkpoints; None disables "best".
      best_mode: "min" (e.g. a loss) or "max" (e.g. BLEU).
      async_save: write in a background thread (``save`` returns once arrays are copied to the host).
    """

    def __init__(self, workdir: str | Path, keep: int, best_metric: str | None = None,
                 best_mode: str = "min", async_save: bool = True):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        if best_mode not in BEST_MODES:
            raise ValueError(f"best_mode must be one of {BEST_MODES}, got {best_mode!r}")
        if not preservation_policy_available():
            raise ImportError("seq2seq_jax needs an orbax-checkpoint with CheckpointManagerOptions."
                              "preservation_policy and ocp.checkpoint_managers (found orbax-checkpoint "
                              f"{getattr(ocp, '__version__', '?')}); upgrade orbax-checkpoint")
        self.workdir = Path(workdir).absolute()
        self.directory = self.workdir / CHECKPOINTS_DIR
        self.keep = keep
        self.best_metric = best_metric
        self.best_mode = best_mode
        self._metrics_lock = threading.Lock()
        self._metrics_by_step: dict[int, dict[str, float]] = {}
        self._unfinished_step: int | None = None  # a background save not yet known to have committed
        options = ocp.CheckpointManagerOptions(
            create=True,
            enable_async_checkpointing=async_save,
            preservation_policy=KeepLatestAndBest(keep, self._best_step_among),
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        self._load_metrics_table()

    # ------------------------------------------------------------------ queries

    def all_steps(self) -> list[int]:
        """Committed steps, oldest first (uncommitted/tmp directories are never listed)."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def best_step(self) -> int | None:
        """The committed step with the best finite ``metrics[best_metric]`` (earliest on ties), or None."""
        return self._best_step_among(self.all_steps())

    def step_metrics(self, step: int) -> dict[str, float] | None:
        """The metrics saved with ``step`` ({} when saved without), None when unknown or unreadable."""
        with self._metrics_lock:
            metrics = self._metrics_by_step.get(step)
        return dict(metrics) if metrics is not None else None

    def step_path(self, step: int) -> Path:
        return self.directory / str(step)

    # ------------------------------------------------------------------ saving

    def save(self, step: int, state: Any, extra: dict[str, Any] | None = None,
             metrics: dict[str, float] | None = None, force: bool = False) -> bool:
        """Save ``state`` (a pytree of jax/numpy arrays), ``extra`` (JSON) and ``metrics`` at ``step``.

        Returns whether a checkpoint was started (False when ``step`` is not newer than the latest one and
        ``force`` is False). Raises ValueError, writing nothing, when a floating leaf is not finite or when
        ``extra`` / ``metrics`` are not JSON-serialisable. With ``async_save`` the write finishes in the
        background; call ``wait_until_finished()`` (or ``close()``) before relying on it.
        """
        step = int(step)
        extra = {} if extra is None else extra
        if not isinstance(extra, dict):
            raise ValueError(f"extra must be a dict, got {type(extra).__name__}")
        _check_json(extra, "extra")
        clean_metrics = self._clean_metrics(metrics)
        bad_leaf = find_nonfinite_leaf(state)
        if bad_leaf is not None:
            raise ValueError(f"refusing to save step {step} to {self.directory}: "
                             f"state leaf {bad_leaf} holds a non-finite value (NaN or Inf)")
        self._finish_background_save()
        latest = self.latest_step()
        if latest is not None and step <= latest and not force:
            logger.warning("not saving step %d: %s already holds step %d", step,
                           self.directory, latest)
            return False
        with self._metrics_lock:
            self._metrics_by_step[step] = clean_metrics
        args = ocp.args.Composite(**{
            _STATE_ITEM: ocp.args.StandardSave(state),
            _EXTRA_ITEM: ocp.args.JsonSave(extra),
            _METRICS_ITEM: ocp.args.JsonSave(clean_metrics),
        })
        try:
            started = bool(self._manager.save(step, args=args, force=force))
        except Exception as error:
            raise self._save_failed(step, error) from error
        except BaseException:
            with self._metrics_lock:
                self._metrics_by_step.pop(step, None)
            raise
        if not started:
            with self._metrics_lock:
                self._metrics_by_step.pop(step, None)
        self._unfinished_step = step if started else None
        return started

    def wait_until_finished(self) -> None:
        """Block until every background save has committed (``CheckpointError`` if one failed)."""
        self._finish_background_save()

    def close(self) -> None:
        """Finish pending saves and release the manager (``CheckpointError`` if a save failed)."""
        try:
            self._finish_background_save()
        finally:
            self._manager.close()

    def _finish_background_save(self) -> None:
        step, self._unfinished_step = self._unfinished_step, None
        try:
            self._manager.wait_until_finished()
        except Exception as error:
            if step is None:
                raise
            raise self._save_failed(step, error) from error

    def _save_failed(self, step: int, error: Exception) -> CheckpointError:
        """The error for a save of ``step`` that failed: its uncommitted directory removed, the cause in one
        line, and the last complete checkpoint."""
        with self._metrics_lock:
            self._metrics_by_step.pop(step, None)
        if jax.process_index() == 0:
            for partial in self.directory.glob(f"{step}.orbax-checkpoint-tmp*"):
                shutil.rmtree(partial, ignore_errors=True)
        try:
            self._manager.reload()
            committed = [s for s in self.all_steps() if s != step]
        except Exception:  # the listing itself fails (the disk is gone): say nothing about what remains
            committed = None
        cause = (f"the disk is full ({os.strerror(errno.ENOSPC)})" if is_disk_full(error)
                 else one_line(error))
        if committed is None:
            remaining = "the checkpoints already saved could not be listed"
        elif committed:
            remaining = f"the last complete checkpoint is step {committed[-1]} ({self.step_path(committed[-1])})"
        else:
            remaining = f"no complete checkpoint is left in {self.directory}"
        return CheckpointError(f"could not save the checkpoint of step {step} to {self.step_path(step)}: "
                               f"{cause}; {remaining}")

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ------------------------------------------------------------------ restoring

    def restore(self, step: int | str | None = None, target: Any = None) -> tuple[int, Any, dict[str, Any]]:
        """Restore ``(step, state, extra)``.

        Args:
          step: an int, None for the latest readable step (falls back past corrupt ones, see module
            docstring), or "best" for ``best_step()``.
          target: None (arrays come back as saved, on the default device; optax NamedTuples come back as
            lists/dicts), or a pytree of the saved structure whose leaves are ``jax.ShapeDtypeStruct`` (with
            a sharding) or concrete arrays: restored arrays get the target's structure, dtype and sharding.

        Raises:
          CheckpointError: no checkpoint exists, the requested one is missing or unreadable, or a readable
            checkpoint does not fit ``target``.
        """
        self._finish_background_save()
        self._manager.reload()
        self._load_metrics_table()
        steps = self.all_steps()
        if not steps:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        if step is None:
            return self._restore_latest_readable(steps, target)
        if step == "best":
            best = self.best_step()
            if best is None:
                reason = ("no best_metric was given to Checkpointer" if self.best_metric is None
                          else f"no checkpoint has a finite metrics[{self.best_metric!r}]")
                raise CheckpointError(f"no best checkpoint in {self.directory}: {reason}")
            step = best
        if isinstance(step, str) or int(step) not in steps:
            raise CheckpointError(f"no checkpoint for step {step!r} in {self.directory}; "
                                  f"available steps: {steps}")
        step = int(step)
        try:
            state, extra = self._restore_step(step, target)
        except _UnreadableCheckpoint as error:
            raise CheckpointError(f"checkpoint {self.step_path(step)} is unreadable: "
                                  f"{error}") from error.__cause__
        return step, state, extra

    def _restore_latest_readable(self, steps: list[int], target: Any) -> tuple[int, Any, dict[str, Any]]:
        failures: list[str] = []
        corrupt: list[int] = []
        for index in range(len(steps) - 1, -1, -1):
            step = steps[index]
            try:
                state, extra = self._restore_step(step, target)
            except _UnreadableCheckpoint as error:
                failures.append(f"step {step} ({self.step_path(step)}): {error}")
                next_try = (f"falling back to step {steps[index - 1]}" if index > 0
                            else "no older checkpoint left")
                logger.warning(f"checkpoint at step {step} ({self.step_path(step)}) is unreadable "
                      f"({error}); {next_try}")
                corrupt.append(step)
                continue
            for bad_step in corrupt:
                self._move_aside(bad_step)
            if corrupt:
                logger.warning(f"restored step {step} instead of the latest step {steps[-1]}")
            return step, state, extra
        raise CheckpointError(f"no readable checkpoint in {self.directory}:\n  "
                              + "\n  ".join(failures))

    def _restore_step(self, step: int, target: Any) -> tuple[Any, dict[str, Any]]:
        """Restore one step; _UnreadableCheckpoint when corrupt, CheckpointError on a target mismatch."""
        restore_target = None if target is None else jax.tree.map(_as_restore_target, target)
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(**{
                _STATE_ITEM: ocp.args.StandardRestore(restore_target),
                _EXTRA_ITEM: ocp.args.JsonRestore(),
            }))
        except Exception as error:  # orbax/tensorstore raise many types (ValueError, KeyError, JSON...)
            if target is not None and self._readable_without_target(step):
                raise CheckpointError(f"checkpoint {self.step_path(step)} does not match the "
                                      f"restore target (a different model or optimizer?): "
                                      f"{one_line(error)}") from error
            raise _UnreadableCheckpoint(one_line(error)) from error
        state, extra = restored[_STATE_ITEM], restored[_EXTRA_ITEM]
        if not isinstance(extra, dict):
            raise _UnreadableCheckpoint(f"extra is a {type(extra).__name__}, expected a JSON object")
        bad_leaf = find_nonfinite_leaf(state)
        if bad_leaf is not None:  # only finite states are ever written, so this is damage on disk
            raise _UnreadableCheckpoint(f"restored leaf {bad_leaf} is not finite")
        return state, extra

    def _readable_without_target(self, step: int) -> bool:
        try:
            self._manager.restore(step, args=ocp.args.Composite(**{
                _STATE_ITEM: ocp.args.StandardRestore(),
                _EXTRA_ITEM: ocp.args.JsonRestore(),
            }))
        except Exception:
            return False
        return True

    def _move_aside(self, step: int) -> None:
        """Move an unreadable step to ``workdir/checkpoints_corrupt`` (kept for inspection, not deleted)."""
        if jax.process_index() != 0:
            return
        source = self.step_path(step)
        if not source.exists():
            return
        destination_root = self.workdir / CORRUPT_DIR
        destination_root.mkdir(parents=True, exist_ok=True)
        destination = destination_root / str(step)
        suffix = 1
        while destination.exists():
            destination = destination_root / f"{step}-{suffix}"
            suffix += 1
        shutil.move(str(source), str(destination))
        logger.warning(f"moved unreadable checkpoint {source} to {destination}")
        self._manager.reload()
        with self._metrics_lock:
            self._metrics_by_step.pop(step, None)

    # ------------------------------------------------------------------ best tracking

    def _clean_metrics(self, metrics: dict[str, float] | None) -> dict[str, float]:
        if metrics is None:
            return {}
        if not isinstance(metrics, dict):
            raise ValueError(f"metrics must be a dict of str to float, "
                             f"got {type(metrics).__name__}")
        clean = {}
        for name, value in metrics.items():
            try:
                clean[str(name)] = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"metrics[{name!r}] must be a number, "
                                 f"got {value!r}") from None
        if self.best_metric is not None and clean and self.best_metric not in clean:
            logger.warning("metrics %s lack best_metric %r; this step cannot become the best",
                           sorted(clean), self.best_metric)
        return clean

    def _best_step_among(self, steps: Sequence[int]) -> int | None:
        if self.best_metric is None:
            return None
        candidates = []
        with self._metrics_lock:
            for step in sorted(steps):
                value = (self._metrics_by_step.get(step) or {}).get(self.best_metric)
                if value is not None and math.isfinite(value):
                    candidates.append((value, step))
        if not candidates:
            return None
        sign = 1.0 if self.best_mode == "min" else -1.0
        return min(candidates, key=lambda item: (sign * item[0], item[1]))[1]

    def _load_metrics_table(self) -> None:
        """Read ``step_metrics`` of every committed step not yet known (unreadable counts as no metrics)."""
        for step in self._manager.all_steps():
            with self._metrics_lock:
                if step in self._metrics_by_step:
                    continue
            try:
                restored = self._manager.restore(step, args=ocp.args.Composite(**{
                    _METRICS_ITEM: ocp.args.JsonRestore()}))
                metrics = restored[_METRICS_ITEM]
                if isinstance(metrics, dict):
                    metrics = {str(k): float(v) for k, v in metrics.items()}
                else:
                    metrics = None
            except Exception as error:
                logger.warning("cannot read the metrics of %s: %s", self.step_path(step),
                               one_line(error))
                metrics = None
            with self._metrics_lock:
                self._metrics_by_step[step] = metrics if metrics is not None else {}


class _UnreadableCheckpoint(Exception):
    """Internal: one checkpoint step failed to read (turned into CheckpointError or a fallback)."""


__all__ = ["Checkpointer", "CheckpointError", "find_nonfinite_leaf", "CHECKPOINTS_DIR", "CORRUPT_DIR"]
