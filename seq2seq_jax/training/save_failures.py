"""How a failed checkpoint save is reported: one line with its cause (a full disk said as such), and the
noise around it hidden unless ``seq2seq -v``.

Orbax logs a failed background save with its whole traceback from its writer thread before raising it;
tensorstore reports each write that completes after orbax closed its event loop; asyncio reports each of
the save's other failed writes that nobody awaited ("... exception was never retrieved") when collected,
possibly after the error is printed. Each is shown only when the checkpoint module's logger is enabled for
DEBUG; the ``CheckpointError`` itself keeps the chain. The filters are installed on import.
"""

from __future__ import annotations

import errno
import logging
import os
import sys

CHECKPOINT_LOGGER = logging.getLogger("seq2seq_jax.training.checkpoint")


class _HideOrbaxTracebacks(logging.Filter):
    """Orbax logs a failed background save with its traceback (through absl's logger, once per thread) before
    the save raises it to the caller, where it becomes a ``CheckpointError``; keep those records only when the
    checkpoint logger is enabled for DEBUG (``seq2seq -v``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info is None or f"{os.sep}orbax{os.sep}" not in record.pathname:
            return True
        return CHECKPOINT_LOGGER.isEnabledFor(logging.DEBUG)


logging.getLogger("absl").addFilter(_HideOrbaxTracebacks())


class _HideOrphanedWriteErrors(logging.Filter):
    """When one write of a save fails, orbax stops awaiting the save's other writes; those that fail too are
    reported by asyncio ("<Future, Task or _GatheringFuture> exception was never retrieved", with the write's
    error) whenever their futures are collected, possibly after the save's ``CheckpointError`` was printed.
    Keep such a record only when the checkpoint logger is enabled for DEBUG; it is recognised by the uncommitted
    orbax directory its error names."""

    def filter(self, record: logging.LogRecord) -> bool:
        first_line = record.msg.partition("\n")[0] if isinstance(record.msg, str) else ""
        if not first_line.endswith(" exception was never retrieved"):
            return True
        error = record.exc_info[1] if record.exc_info else None
        if error is None or ".orbax-checkpoint-tmp" not in str(error):
            return True
        return CHECKPOINT_LOGGER.isEnabledFor(logging.DEBUG)


logging.getLogger("asyncio").addFilter(_HideOrphanedWriteErrors())


def _hide_closed_loop_callbacks(previous_hook):
    """When a save fails, orbax closes its asyncio loop while tensorstore still completes the save's other writes;
    each completion then reports ``RuntimeError('Event loop is closed')`` through ``sys.unraisablehook``, a
    traceback apiece. Drop exactly those unless the checkpoint logger is enabled for DEBUG."""

    def hook(unraisable) -> None:
        if (unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == "Event loop is closed"
                and not CHECKPOINT_LOGGER.isEnabledFor(logging.DEBUG)):
            return
        previous_hook(unraisable)

    return hook


sys.unraisablehook = _hide_closed_loop_callbacks(sys.unraisablehook)


def is_disk_full(error: BaseException) -> bool:
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


def one_line(error: BaseException, limit: int = 300) -> str:
    text = f"{type(error).__name__}: {error}".replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "..."
