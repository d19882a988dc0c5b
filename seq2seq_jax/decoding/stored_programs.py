"""Searches kept compiled between processes. The persistent compilation cache (``seq2seq_jax.compilation_cache``)
saves XLA's compilation, but a process must still trace and lower a search to look its entry up; this store
keeps the compiled executable itself (``jax.experimental.serialize_executable``), so that a second
``seq2seq translate`` or server start runs its searches without tracing them.

An entry's key names everything the program is a function of: the caller's description of the function (for a
search: the model's graph definition, the decode settings and the output bound), the arguments' tree, shapes and
dtypes, this package's source, the flax version and the devices; the directory, inside the compilation cache's,
already names jax, jaxlib, the CPU and ``XLA_FLAGS``. An entry carries a checksum, so a damaged, truncated or
foreign file is never handed to XLA: it costs a compile and one warning. Entries are written to a temporary file
and renamed (two processes may write the same key), and the store is kept under ``MAX_BYTES`` by dropping the
least recently used. An executable that jax read from its own persistent cache is not stored: XLA:CPU serializes
such an executable again without its compiled functions (the loaded copy fails to run), so that program keeps
going through jax's cache. A loaded executable whose first run fails is compiled again (one warning). Off unless
``enable`` was called (the commands and ``seq2seq_jax.load()`` call it through
``seq2seq_jax.compilation_cache.enable``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import tempfile
from functools import cache
from pathlib import Path

import jax

logger = logging.getLogger(__name__)

MAX_BYTES = 512 << 20
MAGIC = b"seq2seq-jax stored program 1\n"
_DIGEST_BYTES = 32
_state: dict[str, Path | bool | None] = {"directory": None, "warned": False}
_JAX_CACHE_HIT = "/jax/compilation_cache/cache_hits"
_jax_cache_hits = [0]  # jax's persistent-cache hits in this process, counted by _count_jax_cache_hits


def _count_jax_cache_hits(event: str, **metadata) -> None:
    if event == _JAX_CACHE_HIT:
        _jax_cache_hits[0] += 1


jax.monitoring.register_event_listener(_count_jax_cache_hits)


def enable(directory: Path | None) -> None:
    """Keep compiled searches in ``directory`` (None: turn the store off)."""
    _state["directory"] = directory


def directory() -> Path | None:
    return _state["directory"]  # type: ignore[return-value]


@cache
def _package_digest() -> str:
    """A digest of this package's Python source, so that a changed package never runs an old program."""
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parents[1]
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _arguments_signature(args: tuple) -> str:
    """The call's tree structure and each leaf's shape, dtype, weak type and placement (a jax array's sharding):
    what the executable was compiled for."""
    leaves, tree = jax.tree.flatten(args)
    avals = [(tuple(leaf.shape), str(leaf.dtype), bool(getattr(leaf, "weak_type", False)),
              str(getattr(leaf, "sharding", None))) for leaf in leaves]
    return f"{tree}\n{avals}"


def _entry_key(description: str, signature: str) -> str:
    import flax

    devices = jax.devices()
    described = "\n".join([description, signature, _package_digest(), flax.__version__, devices[0].platform,
                           devices[0].device_kind, str(len(devices))])
    return hashlib.sha256(described.encode()).hexdigest()


def _warn_once(message: str) -> None:
    if not _state["warned"]:
        _state["warned"] = True
        logger.warning(message)


def _load(path: Path, args: tuple):
    """The executable stored at ``path`` for ``args``; None when there is none or it cannot be used."""
    from jax.experimental import serialize_executable

    try:
        data = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):  # not stored yet, or no store to read
        return None
    except OSError as error:
        _warn_once(f"stored search unreadable, compiling it instead: {path} ({error.strerror or error})")
        return None
    body = data[len(MAGIC) + _DIGEST_BYTES:]
    if (not data.startswith(MAGIC) or data[len(MAGIC):len(MAGIC) + _DIGEST_BYTES] != hashlib.sha256(body).digest()):
        _warn_once(f"stored search damaged, compiling it instead: {path}")
        return None
    try:
        payload, out_tree = pickle.loads(body)
        compiled = serialize_executable.deserialize_and_load(payload, jax.tree.structure((args, {})), out_tree)
    except Exception as error:  # an entry written by another stack that still passed its checksum
        _warn_once(f"stored search unusable, compiling it instead: {path} ({type(error).__name__})")
        return None
    try:
        os.utime(path)  # the least recently used entries go first
    except OSError:
        pass
    return compiled


def _store(path: Path, compiled) -> None:
    """Write ``compiled`` to ``path`` atomically; a directory that cannot be written costs one warning."""
    from jax.experimental import serialize_executable

    try:
        payload, _, out_tree = serialize_executable.serialize(compiled)
        body = pickle.dumps((payload, out_tree))
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".tmp-", delete=False) as stream:
            stream.write(MAGIC + hashlib.sha256(body).digest() + body)
        os.replace(stream.name, path)
    except Exception as error:
        _warn_once(f"cannot store a compiled search in {path.parent} ({getattr(error, 'strerror', None) or error})")
        return
    _evict(path.parent)


def _evict(folder: Path) -> None:
    """Drop the least recently used entries until the store holds at most ``MAX_BYTES``."""
    try:
        entries = sorted((entry.stat().st_mtime, entry.stat().st_size, entry) for entry in folder.glob("*.program"))
        total = sum(size for _, size, _ in entries)
        for _, size, entry in entries:
            if total <= MAX_BYTES:
                break
            entry.unlink(missing_ok=True)
            total -= size
    except OSError:
        pass


class StoredProgram:
    """``jitted`` (a ``jax.jit`` function) called through the store: each new argument signature's executable is
    loaded when stored under ``description`` and compiled (then stored) when not. Without a store, and in a run
    of several processes, it is ``jitted`` itself."""

    def __init__(self, jitted, description: str):
        self.jitted = jitted
        self.description = description
        self._executables: dict[str, object] = {}

    def __call__(self, *args):
        folder = directory()
        if folder is None or jax.process_count() > 1:  # a program of several processes is compiled by each
            return self.jitted(*args)
        signature = _arguments_signature(args)
        executable = self._executables.get(signature)
        if executable is not None:
            return executable(*args)
        path = folder / f"{_entry_key(self.description, signature)}.program"
        executable = _load(path, args)
        if executable is not None:
            outputs = _first_run(executable, path, args)
            if outputs is not None:
                logger.debug("loaded stored %s", path.name)
                self._executables[signature] = executable
                return outputs
        hits = _jax_cache_hits[0]
        executable = self._executables[signature] = self.jitted.lower(*args).compile()
        if _jax_cache_hits[0] == hits:
            _store(path, executable)
            logger.debug("compiled and stored %s", path.name)
        else:
            logger.debug("compiled from jax's cache, not stored: %s", path.name)
        return executable(*args)


def _first_run(executable, path: Path, args: tuple):
    """The outputs of a loaded executable's first run, waited for; None (one warning, the entry dropped) when it
    fails to run."""
    try:
        return jax.block_until_ready(executable(*args))
    except jax.errors.JaxRuntimeError as error:
        _warn_once(f"stored search failed to run, compiling it instead: {path} ({str(error).splitlines()[0]})")
        path.unlink(missing_ok=True)
        return None
