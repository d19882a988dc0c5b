"""The install command an error names when a command needs an extra (``jax``, ``torch``) that is missing.

From a source checkout (an editable install, or the checkout on ``PYTHONPATH``: this package's parent holds the
project's ``pyproject.toml``) it is ``pip install -e ".[jax]"`` (with the checkout's path when the working
directory is elsewhere); from an installed wheel, ``pip install 'seq2seq-jax[jax]'``.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT = "seq2seq-jax"


def checkout_root() -> Path | None:
    """The source checkout this package is imported from, or None for an installed copy."""
    root = Path(__file__).resolve().parents[2]
    try:
        pyproject = (root / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return None
    return root if f'name = "{PROJECT}"' in pyproject else None


def install_command(extra: str) -> str:
    """``pip install ...`` that adds ``extra`` to this install."""
    root = checkout_root()
    if root is None:
        return f"pip install '{PROJECT}[{extra}]'"
    try:
        here = Path(os.getcwd()).resolve()
    except OSError:  # the working directory was removed
        here = None
    return f'pip install -e ".[{extra}]"' if here == root else f'pip install -e "{root}[{extra}]"'
