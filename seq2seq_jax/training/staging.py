"""Directories that appear whole or not at all: written in a hidden temporary sibling, then renamed into place.

An interrupted export, import, preprocess or checkpoint average leaves at most a ``.NAME.tmp-HOST-PID-*``
directory beside the target, never a half-written target that a later command would take for a good one. The
next staging of the same target removes such a directory (it may hold gigabytes of shards) once the process
that made it is gone: same host, no process with that id; others are left alone. A workdir lock file held
in the target (``workdir_lock``, taken before staging) does not make it non-empty and moves into the staged
directory just before the rename, so the lock stays held on the directory that takes the target's place.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from seq2seq_jax.training.workdir_lock import LOCK_FILE

logger = logging.getLogger(__name__)


class StagingError(ValueError):
    """The target cannot take the staged directory (it is a file, or a non-empty directory not to replace)."""


def is_nonempty_dir(path: Path) -> bool:
    """A directory holding anything but a workdir lock file."""
    return path.is_dir() and any(entry.name != LOCK_FILE for entry in path.iterdir())


@contextlib.contextmanager
def staged_directory(target: str | Path, replace: bool = False) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``target``; on success rename it to ``target``.

    An existing ``target`` must be an empty directory unless ``replace`` (then the old one is removed after
    the rename). On any exception the temporary directory is removed and ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_stagings(target)
    temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{socket.gethostname()}-{os.getpid()}-",
                                      dir=target.parent))
    try:
        yield temporary
        _move_into_place(temporary, target, replace)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def remove_abandoned_stagings(target: Path) -> list[Path]:
    """Remove the staging directories of ``target`` whose process is gone (made on this host by a process id
    that no longer exists: killed before it could clean up); returns them. Staging directories of a live
    process, of another host, or named otherwise are kept."""
    pattern = re.compile(rf"\.{re.escape(target.name)}\.tmp-(?P<host>.+)-(?P<pid>\d+)-[a-z0-9_]+")
    removed = []
    for candidate in target.parent.glob(f".{glob.escape(target.name)}.tmp-*"):
        named = pattern.fullmatch(candidate.name)
        if (named is None or not candidate.is_dir() or named["host"] != socket.gethostname()
                or _process_exists(int(named["pid"]))):
            continue
        shutil.rmtree(candidate, ignore_errors=True)
        logger.warning(f"removed {candidate}: the staging directory of an interrupted run (process {named['pid']} "
                       f"on this host is gone)")
        removed.append(candidate)
    return removed


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _move_into_place(temporary: Path, target: Path, replace: bool) -> None:
    _default_permissions(temporary)
    old = None
    if target.exists() or target.is_symlink():
        if not target.is_dir():
            raise StagingError(f"{target} exists and is not a directory")
        if is_nonempty_dir(target) and not replace:
            raise StagingError(f"{target} is not empty")
        if (target / LOCK_FILE).is_file():
            os.replace(target / LOCK_FILE, temporary / LOCK_FILE)
        if is_nonempty_dir(target):
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
        else:
            target.rmdir()
    os.replace(temporary, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _default_permissions(root: Path) -> None:
    """``mkdtemp`` makes a private (0700) directory: give the tree the modes the umask gives new files."""
    umask = os.umask(0)
    os.umask(umask)
    for directory, _, files in os.walk(root):
        os.chmod(directory, 0o777 & ~umask)
        for name in files:
            os.chmod(os.path.join(directory, name), 0o666 & ~umask)


__all__ = ["StagingError", "staged_directory", "is_nonempty_dir", "remove_abandoned_stagings"]
