"""Reading a JSON file with errors that name the file (and the line of a syntax error)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_json(path: str | Path, error: type[Exception] = ValueError, invalid: str = "invalid JSON") -> Any:
    """The parsed content of ``path``. Raises ``error`` with ``"{path} is missing"``, ``"cannot read {path}:
    ..."`` or ``"{path}:{line}: {invalid}: ..."``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError) as problem:
        raise error(f"cannot read {path}: {problem}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as problem:
        raise error(f"{path}:{problem.lineno}: {invalid}: {problem.msg}") from None


def read_json_object(path: str | Path, error: type[Exception] = ValueError) -> dict[str, Any]:
    """``read_json`` of a file that must hold a JSON object."""
    record = read_json(path, error)
    if not isinstance(record, dict):
        raise error(f"{path}: expected a JSON object")
    return record


__all__ = ["read_json", "read_json_object"]
