"""How seq2seq_jax speaks: the ``logging`` module, one logger per module under ``seq2seq_jax``.

INFO is what a run reports (data, vocabulary, batches, resumes, the end of training, validation samples);
DEBUG the details (each compiled search, the tracebacks of orbax's background writes); WARNING what the user
should act on. The library configures nothing; ``configure`` is the CLI's: INFO lines on stdout as plain
text (on stderr for a command whose results go to stdout), warnings and errors on stderr, ``-v`` adds DEBUG.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

PACKAGE = "seq2seq_jax"


class _Below(logging.Filter):
    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < self.level


def configure(verbose: bool = False, prefix: str = "", results_on_stdout: bool = False) -> None:
    """The CLI's logging: the package's INFO (DEBUG with ``verbose``) to stdout (to stderr when
    ``results_on_stdout``: the command's output stays its output alone), its warnings and errors to stderr, each
    line as ``prefix`` + message; other libraries' warnings (INFO with ``verbose``) to stderr."""
    package = logging.getLogger(PACKAGE)
    for handler in list(package.handlers):
        package.removeHandler(handler)
    formatter = logging.Formatter(prefix + "%(message)s")
    out = logging.StreamHandler(sys.stderr if results_on_stdout else sys.stdout)
    out.addFilter(_Below(logging.WARNING))
    err = logging.StreamHandler(sys.stderr)
    err.setLevel(logging.WARNING)
    for handler in (out, err):
        handler.setFormatter(formatter)
        package.addHandler(handler)
    package.setLevel(logging.DEBUG if verbose else logging.INFO)
    package.propagate = False
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")


@contextlib.contextmanager
def warnings_only(name: str = PACKAGE, enabled: bool = True) -> Iterator[None]:
    """Within the block, logger ``name`` (and those below it) passes warnings and errors only; ``enabled=False``
    leaves it as it is."""
    logger = logging.getLogger(name)
    level = logger.level
    if enabled and logger.getEffectiveLevel() < logging.WARNING:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)
