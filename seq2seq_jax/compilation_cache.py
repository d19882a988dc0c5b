"""The persistent compilation cache: every command that compiles (train, translate, evaluate, score, serve, and
``seq2seq_jax.load()``) reuses the XLA programs an earlier process compiled, instead of compiling again.

On by default, in ``$SEQ2SEQ_JAX_CACHE_DIR``, else ``$XDG_CACHE_HOME/seq2seq-jax`` (``~/.cache/seq2seq-jax``);
``SEQ2SEQ_JAX_CACHE_DIR=off`` (or ``seq2seq --no-compile-cache``) turns it off. Entries go to a subdirectory
named after what a compiled program depends on beyond jax's own key: the jax and jaxlib versions, the host
CPU (model and instruction-set features) and ``XLA_FLAGS``, so that a cache shared by machines or software
stacks never hands one a program compiled for another. Each subdirectory is capped at ``MAX_BYTES`` (jax
evicts the least recently used entries). A cache that cannot be used (read-only, full, damaged entries, two
processes writing at once) costs a compile, never the run: jax reads and writes entries under its own
error handling, and this module falls back to no cache with one warning when the directory cannot be made.
Searches are also kept whole, beside jax's entries, so that a second process need not trace them
(``seq2seq_jax.decoding.stored_programs``, its own cap ``stored_programs.MAX_BYTES``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import warnings
from pathlib import Path

logger = logging.getLogger(__name__)

ENVIRONMENT_VARIABLE = "SEQ2SEQ_JAX_CACHE_DIR"
OFF = "off"
MAX_BYTES = 2 << 30  # per machine and software stack
STORED_PROGRAMS = "searches"  # the subdirectory of whole compiled searches (decoding.stored_programs)
_unusable: set[Path] = set()  # directories this process could not create: warned about once


def default_root() -> Path | None:
    """The cache's root directory from the environment; None when it is turned off."""
    configured = os.environ.get(ENVIRONMENT_VARIABLE, "")
    if configured.lower() == OFF:
        return None
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "seq2seq-jax"


def _cpu_description() -> str:
    """The host CPU's model name and feature flags (Linux ``/proc/cpuinfo``), else what ``platform`` says."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "flags", "Features", "CPU implementer", "CPU part") and key not in fields:
            fields[key] = " ".join(sorted(value.split()))
    if not fields:
        return f"{platform.machine()} {platform.processor()}"
    return "; ".join(f"{key}={value}" for key, value in sorted(fields.items()))


def stack_key() -> str:
    """The name of this machine and software stack's subdirectory: ``jax-VERSION-MACHINE-HASH``, the hash over
    the jax and jaxlib versions, the CPU's model and features and ``XLA_FLAGS``."""
    import jax
    import jaxlib

    described = "\n".join([jax.__version__, jaxlib.__version__, platform.machine(), _cpu_description(),
                           os.environ.get("XLA_FLAGS", "")])
    digest = hashlib.sha256(described.encode()).hexdigest()[:16]
    return f"jax-{jax.__version__}-{platform.machine()}-{digest}"


def enable(root: Path | None | str = "default") -> Path | None:
    """Turn the persistent cache on for this process under ``root`` (default ``default_root()``; None: leave
    it off). Returns the directory used, or None when the cache is off or the directory cannot be made (one
    warning then). Call before the first compilation; calling again changes nothing."""
    import jax

    if jax.config.jax_compilation_cache_dir:
        return Path(jax.config.jax_compilation_cache_dir)
    root = default_root() if root == "default" else root
    if root is None:
        return None
    directory = Path(root) / stack_key()
    if directory in _unusable:
        return None
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        _unusable.add(directory)
        logger.warning(f"compilation cache off: cannot create {directory} ({error.strerror or error}); "
                       f"set {ENVIRONMENT_VARIABLE} to a writable directory, or to {OFF}")
        return None
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    from seq2seq_jax.decoding import stored_programs

    stored_programs.enable(directory / STORED_PROGRAMS)
    _one_warning_for_unusable_entries()
    logger.debug(f"compilation cache: {directory}")
    return directory


def _one_warning_for_unusable_entries() -> None:
    """jax warns once per cache entry it cannot read or write (each a two-line ``UserWarning``); a damaged or
    unwritable cache then fills the terminal. Show the first as one line and drop the rest."""
    show = warnings.showwarning
    shown = []

    def show_first(message, category, filename, lineno, file=None, line=None):
        if "persistent compilation cache" not in str(message):
            return show(message, category, filename, lineno, file, line)
        if not shown:
            shown.append(message)
            logger.warning(f"compilation cache entry unusable, compiling instead: {str(message).splitlines()[0]}")
        return None

    warnings.showwarning = show_first
