"""Checkpoints: save / restore / latest / best, with the data-iterator state and resolved config beside
the arrays. This is the only module of the project that imports orbax.

Layout on disk (one orbax ``CheckpointManager`` under ``workdir/checkpoints``)::

    workdir/checkpoints/<step>/state/          the array pytree (params, optimizer state, ...)
    workdir/checkpoints/<step>/extra/          JSON: data-iterator state, config, rng, anything
    workdir/checkpoints/<step>/step_metrics/   JSON: the metrics given to ``save`` ({} when none)
    workdir/checkpoints_corrupt/<step>[-n]/    unreadable checkpoints moved aside by ``restore()``

Keeping the latest N *and* the best
-----------------------------------
Orbax's ``best_fn`` / ``max_to_keep`` options keep only the best N by metric, so the latest checkpoints
(the ones a resumed run needs) can be deleted. Instead the manager gets a *preservation policy*
(``CheckpointManagerOptions.preservation_policy``, the public ``ocp.checkpoint_managers`` protocol):
``_KeepLatestAndBest`` marks a step for keeping when it is one of the ``keep`` newest steps **or** it is the
best step by ``metrics[best_metric]``. One directory, one manager, every checkpoint written once; orbax
applies the policy after a save has committed, so a failed save never deletes anything. The best step is
computed from this object's own table of per-step metrics (read back from ``step_metrics`` when the
``Checkpointer`` is opened), not from orbax's metrics file, so that a garbage metrics file makes one step
"metric-less" instead of making the whole manager fail to open. At most ``keep + 1`` checkpoints exist.

Safety
------
* A state with a non-finite floating leaf is refused (``ValueError`` naming the leaf); nothing is written.
* Orbax writes a step to ``<step>.orbax-checkpoint-tmp*`` and renames it when committed; uncommitted
  directories are never listed, so a save interrupted by a crash is never restored. They are not deleted
  when a ``Checkpointer`` is opened (a reader such as ``translate`` must not delete the directory that a
  running trainer is writing); orbax replaces a stale one when that step is saved again.
* ``restore(None)`` tries the newest step first; a checkpoint that cannot be read (missing, truncated or
  garbage files) is reported with a warning (logging and stderr) naming it and the step tried next, moved to
  ``workdir/checkpoints_corrupt`` (nothing is deleted; a resumed run can then save that step number again),
  and the previous step is restored. If no step can be read, ``CheckpointError`` lists each one with its
  error. An explicit step (or ``"best"``) that cannot be read raises ``CheckpointError`` naming its path.
* A checkpoint that is readable but does not fit the ``target`` (a different model) raises
  ``CheckpointError`` at once; it is not mistaken for corruption.
* A save that fails (in ``save``, or, for a background save, in the next ``save``, ``wait_until_finished`` or
  ``close``) raises ``CheckpointError`` naming the step, its directory, the cause in a line (a full disk,
  ENOSPC anywhere in the exception chain, is said as such) and the last complete checkpoint, which still
  restores; the step's uncommitted ``*.orbax-checkpoint-tmp*`` directory is removed. Orbax logs such a
  failure with its whole traceback from its writer thread before raising it, tensorstore reports each
  write that completes after orbax closed its event loop, and asyncio reports each of the save's other
  failed writes that nobody awaited ("... exception was never retrieved") when it is collected, which may
  be after the error is printed; all are shown only when this module's logger is enabled for INFO
  (``seq2seq --verbose``). The error itself keeps the chain.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import shutil
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
CORRUPT_DIR = "checkpoints_corrupt"
_STATE_ITEM = "state"
_EXTRA_ITEM = "extra"
_METRICS_ITEM = "step_metrics"
BEST_MODES = ("min", "max")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be saved or restored (disk full, missing, corrupt, or not matching the target)."""


class _HideOrbaxTracebacks(logging.Filter):
    """Orbax logs a failed background save with its traceback (through absl's logger, once per thread) before
    the save raises it to the caller, where it becomes a ``CheckpointError``; keep those records only when this
    module's logger is enabled for INFO."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info is None or f"{os.sep}orbax{os.sep}" not in record.pathname:
            return True
        return logger.isEnabledFor(logging.INFO)


logging.getLogger("absl").addFilter(_HideOrbaxTracebacks())


class _HideOrphanedWriteErrors(logging.Filter):
    """When one write of a save fails, orbax stops awaiting the save's other writes; those that fail too are
    reported by asyncio ("<Future, Task or _GatheringFuture> exception was never retrieved", with the write's
    error) whenever their futures are collected, possibly after the save's ``CheckpointError`` was printed.
    Keep such a record only when this module's logger is enabled for INFO; it is recognised by the uncommitted
    orbax directory its error names."""

    def filter(self, record: logging.LogRecord) -> bool:
        first_line = record.msg.partition("\n")[0] if isinstance(record.msg, str) else ""
        if not first_line.endswith(" exception was never retrieved"):
            return True
        error = record.exc_info[1] if record.exc_info else None
        if error is None or ".orbax-checkpoint-tmp" not in str(error):
            return True
        return logger.isEnabledFor(logging.INFO)


logging.getLogger("asyncio").addFilter(_HideOrphanedWriteErrors())


def _hide_closed_loop_callbacks(previous_hook):
    """When a save fails, orbax closes its asyncio loop while tensorstore still completes the save's other writes;
    each completion then reports ``RuntimeError('Event loop is closed')`` through ``sys.unraisablehook``, a
    traceback apiece. Drop exactly those unless this module's logger is enabled for INFO."""

    def hook(unraisable) -> None:
        if (unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == "Event loop is closed"
                and not logger.isEnabledFor(logging.INFO)):
            return
        previous_hook(unraisable)

    return hook


sys.unraisablehook = _hide_closed_loop_callbacks(sys.unraisablehook)


def _is_disk_full(error: BaseException) -> bool:
    """ENOSPC anywhere in the exception chain; tensorstore reports it inside a ValueError's message
    (``... No space left on device [os_error_code='28']``)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        text = str(error)
        if (getattr(error, "errno", None) == errno.ENOSPC or os.strerror(errno.ENOSPC) in text
                or f"os_error_code='{errno.ENOSPC}'" in text):
            return True
        error = error.__cause__ or error.__context__
    return False


def _warn(message: str) -> None:
    """Warn through logging and on stderr, so a user running the command line always sees it."""
    logger.warning(message)
    print(f"WARNING: {message}", file=sys.stderr, flush=True)


def _is_floating(leaf: Any) -> bool:
    dtype = getattr(leaf, "dtype", None)
    if dtype is None:
        return isinstance(leaf, float)
    return bool(jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.complexfloating))


def find_nonfinite_leaf(state: Any) -> str | None:
    """Path (``jax.tree_util.keystr``) of the first floating leaf of ``state`` holding NaN/Inf, or None."""
    leaves_with_paths = jax.tree_util.tree_flatten_with_path(state)[0]
    floating = [(path, leaf) for path, leaf in leaves_with_paths if _is_floating(leaf)]
    if not floating:
        return None
    # One device-side reduction per leaf, one transfer to the host for all of them.
    all_finite = jax.device_get([jnp.all(jnp.isfinite(jnp.asarray(leaf))) for _, leaf in floating])
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
        raise ValueError(f"checkpoint.py: {what} must be JSON-serialisable (plain dict/list/str/int/float/"
                         f"bool/None; convert numpy scalars and arrays first): {error}") from None


def _preservation_policy_protocol_available() -> bool:
    managers = getattr(ocp, "checkpoint_managers", None)
    fields = getattr(ocp.CheckpointManagerOptions, "__dataclass_fields__", {})
    has_protocol = managers is not None and hasattr(managers, "PreservationPolicy")
    return has_protocol and "preservation_policy" in fields


class _KeepLatestAndBest:
    """Orbax preservation policy (``ocp.checkpoint_managers.PreservationPolicy`` protocol): keep a step when
    it is among the ``keep`` newest steps or it is the best one according to ``best_step_among``."""

    def __init__(self, keep: int, best_step_among):
        self.keep = keep
        self.best_step_among = best_step_among

    def should_preserve(self, checkpoints: Sequence[Any], *, context: Any = None) -> Sequence[bool]:
        steps = [info.step for info in checkpoints]
        newest = set(sorted(steps)[-self.keep:])
        best = self.best_step_among(steps)
        return [step in newest or step == best for step in steps]


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
            raise ValueError(f"checkpoint.py: keep must be >= 1, got {keep}")
        if best_mode not in BEST_MODES:
            raise ValueError(f"checkpoint.py: best_mode must be one of {BEST_MODES}, got {best_mode!r}")
        if not _preservation_policy_protocol_available():
            raise ImportError("checkpoint.py needs an orbax-checkpoint with CheckpointManagerOptions."
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
            preservation_policy=_KeepLatestAndBest(keep, self._best_step_among),
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
            raise ValueError(f"checkpoint.py: extra must be a dict, got {type(extra).__name__}")
        _check_json(extra, "extra")
        clean_metrics = self._clean_metrics(metrics)
        bad_leaf = find_nonfinite_leaf(state)
        if bad_leaf is not None:
            raise ValueError(f"checkpoint.py: refusing to save step {step} to {self.directory}: "
                             f"state leaf {bad_leaf} holds a non-finite value (NaN or Inf)")
        self._finish_background_save()
        latest = self.latest_step()
        if latest is not None and step <= latest and not force:
            logger.warning("checkpoint.py: not saving step %d: %s already holds step %d", step,
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
        cause = (f"the disk is full ({os.strerror(errno.ENOSPC)})" if _is_disk_full(error)
                 else _one_line(error))
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
            raise CheckpointError(f"checkpoint.py: no checkpoint in {self.directory}")
        if step is None:
            return self._restore_latest_readable(steps, target)
        if step == "best":
            best = self.best_step()
            if best is None:
                reason = ("no best_metric was given to Checkpointer" if self.best_metric is None
                          else f"no checkpoint has a finite metrics[{self.best_metric!r}]")
                raise CheckpointError(f"checkpoint.py: no best checkpoint in {self.directory}: {reason}")
            step = best
        if isinstance(step, str) or int(step) not in steps:
            raise CheckpointError(f"checkpoint.py: no checkpoint for step {step!r} in {self.directory}; "
                                  f"available steps: {steps}")
        step = int(step)
        try:
            state, extra = self._restore_step(step, target)
        except _UnreadableCheckpoint as error:
            raise CheckpointError(f"checkpoint.py: checkpoint {self.step_path(step)} is unreadable: "
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
                _warn(f"checkpoint.py: checkpoint at step {step} ({self.step_path(step)}) is unreadable "
                      f"({error}); {next_try}")
                corrupt.append(step)
                continue
            for bad_step in corrupt:
                self._move_aside(bad_step)
            if corrupt:
                _warn(f"checkpoint.py: restored step {step} instead of the latest step {steps[-1]}")
            return step, state, extra
        raise CheckpointError(f"checkpoint.py: no readable checkpoint in {self.directory}:\n  "
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
                raise CheckpointError(f"checkpoint.py: checkpoint {self.step_path(step)} does not match the "
                                      f"restore target (a different model or optimizer?): "
                                      f"{_one_line(error)}") from error
            raise _UnreadableCheckpoint(_one_line(error)) from error
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
        _warn(f"checkpoint.py: moved unreadable checkpoint {source} to {destination}")
        self._manager.reload()
        with self._metrics_lock:
            self._metrics_by_step.pop(step, None)

    # ------------------------------------------------------------------ best tracking

    def _clean_metrics(self, metrics: dict[str, float] | None) -> dict[str, float]:
        if metrics is None:
            return {}
        if not isinstance(metrics, dict):
            raise ValueError(f"checkpoint.py: metrics must be a dict of str to float, "
                             f"got {type(metrics).__name__}")
        clean = {}
        for name, value in metrics.items():
            try:
                clean[str(name)] = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"checkpoint.py: metrics[{name!r}] must be a number, "
                                 f"got {value!r}") from None
        if self.best_metric is not None and clean and self.best_metric not in clean:
            logger.warning("checkpoint.py: metrics %s lack best_metric %r; this step cannot become the best",
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
                logger.warning("checkpoint.py: cannot read the metrics of %s: %s", self.step_path(step),
                               _one_line(error))
                metrics = None
            with self._metrics_lock:
                self._metrics_by_step[step] = metrics if metrics is not None else {}


class _UnreadableCheckpoint(Exception):
    """Internal: one checkpoint step failed to read (turned into CheckpointError or a fallback)."""


def _one_line(error: BaseException, limit: int = 300) -> str:
    text = f"{type(error).__name__}: {error}".replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "..."


__all__ = ["Checkpointer", "CheckpointError", "find_nonfinite_leaf", "CHECKPOINTS_DIR", "CORRUPT_DIR"]
