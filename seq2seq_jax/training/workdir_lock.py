"""One writer per workdir: ``with workdir_lock(W, "seq2seq train"): ...`` holds ``W/.lock`` or refuses at once.

The lock is ``fcntl.flock`` on ``W/.lock``, which the kernel releases when its holder exits however it exits,
so a lock never outlives its process (on a filesystem without file locks the command warns and goes on
unprotected). The file holds a JSON record of the holder (host, pid, command, start time): a second writer
gets ``WorkdirLockedError`` naming it; a writer that finds a record with the flock free says it took a stale
lock over; the holder deletes the file on release, and every acquirer verifies that the path still names the
file it locked. Writers (``train``, ``average --out``, ``import-torch --workdir``) take it before writing;
readers (``translate``, ``evaluate``, ``export-torch``) take none. A multi-host run takes one lock, in process
0. For a ``staging.staged_directory`` the lock file moves with the directory. Standard library only.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

LOCK_FILE = ".lock"


class WorkdirLockedError(RuntimeError):
    """Another live process holds the workdir's lock."""


def _warn_on_stderr(message: str) -> None:
    print(f"WARNING: {message}", file=sys.stderr, flush=True)


def _describe(record: dict) -> str:
    """``pid P on host H (seq2seq train, since T)`` from a lock record (fields may be missing)."""
    details = [str(record["command"])] if record.get("command") else []
    if record.get("since"):
        details.append(f"since {record['since']}")
    described = f"pid {record.get('pid', '?')} on host {record.get('host', '?')}"
    return described + (f" ({', '.join(details)})" if details else "")


def _read_record(fd: int) -> dict | None:
    """The JSON record in the lock file, None when it is empty; an unreadable record is reported as such."""
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    text = b"".join(chunks).decode("utf-8", errors="replace").strip()
    if not text:
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return {"command": f"unreadable lock record {text[:80]!r}"}
    return record if isinstance(record, dict) else {"command": f"unreadable lock record {text[:80]!r}"}


_NO_LOCKING = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL)  # a filesystem without flock


def _open_and_lock(path: Path) -> int:
    """An fd of ``path`` holding its exclusive flock; ``WorkdirLockedError`` when another process holds it, and
    ``OSError`` (one of ``_NO_LOCKING``) when the filesystem cannot lock."""
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:  # the directory was removed by a previous holder meanwhile: again
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            _refuse(path, fd)
        try:
            same_file = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same_file = False
        if same_file:
            return fd
        os.close(fd)  # the previous holder deleted (released) the file between our open and flock: again


def _refuse(path: Path, fd: int) -> NoReturn:
    try:
        record = _read_record(fd) or {}
    finally:
        os.close(fd)
    directory = path.parent
    holder = _describe(record) if record else "another process (its record is not written yet)"
    raise WorkdirLockedError(
        f"{directory} is in use: {holder} holds its lock {path}. A workdir takes one writer at a time: wait "
        f"for that run to finish, or stop it (kill {record.get('pid', 'PID')} on {record.get('host', 'its host')})"
        " and start again; translate and evaluate can read it meanwhile.")


@contextlib.contextmanager
def workdir_lock(directory: str | Path, command: str,
                 warn: Callable[[str], None] = _warn_on_stderr) -> Iterator[Path]:
    """Hold the lock of ``directory`` (created if missing) for the ``with`` body; yields the lock file's path.

    Raises ``WorkdirLockedError`` at once when another live process holds it. A record left by a process that
    is gone is taken over, and ``warn`` is told so. ``command`` (e.g. ``"seq2seq train"``) goes into the record.
    """
    directory = Path(directory)
    created = not directory.exists()
    path = directory / LOCK_FILE
    try:
        fd = _open_and_lock(path)
    except OSError as error:
        if error.errno not in _NO_LOCKING:
            raise
        fd, unsupported = None, error.strerror
    if fd is None:  # outside the except clause, so that errors of the with body do not chain to this one
        warn(f"cannot lock {directory}: its filesystem does not support file locks ({unsupported}); it is not "
             "protected against a second writer")
        with contextlib.suppress(OSError):
            if path.stat().st_size == 0:  # the empty file just created for the lock
                path.unlink()
        yield path
        return
    try:
        stale = _read_record(fd)
        if stale is not None:
            warn(f"took over the stale lock of {_describe(stale)} on {directory}: that process is gone "
                 "(it stopped without releasing the lock: killed or crashed)")
        record = {"host": socket.gethostname(), "pid": os.getpid(), "command": command,
                  "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(record, sort_keys=True) + "\n").encode("utf-8"))
        os.fsync(fd)
        yield path
    finally:
        _release(path, fd)
        if created:
            with contextlib.suppress(OSError):  # a directory made only to hold the lock goes with it
                directory.rmdir()


def refuse_if_locked(directory: str | Path) -> None:
    """Raise ``WorkdirLockedError`` if another process holds ``directory``'s lock right now; take and change
    nothing. A quick refusal before a costly start (``seq2seq train`` checks before importing JAX); the lock
    itself is taken later by ``workdir_lock``."""
    path = Path(directory) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            _refuse(path, fd)
    os.close(fd)  # releases the shared lock, if taken


def _release(path: Path, fd: int) -> None:
    """Delete the lock file if it still is ours (it may have moved with a staged directory), then unlock."""
    try:
        try:
            ours = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            ours = False
        if ours:
            path.unlink()
        else:
            os.ftruncate(fd, 0)  # the file was moved or deleted by someone else: clear our record wherever it is
    finally:
        os.close(fd)


__all__ = ["LOCK_FILE", "WorkdirLockedError", "refuse_if_locked", "workdir_lock"]
