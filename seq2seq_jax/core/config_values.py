"""A ``--set section.key=value`` string -> the value of its field's type (bool, int, float, str, tuples)."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A configuration value or combination of values that cannot work."""


def parse_value(raw: str, annotation: str, key: str) -> Any:
    if annotation == "bool":
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"--set {key}={raw}: expected a boolean (true/false)")
    if annotation.startswith("tuple[str"):
        return tuple(item for item in raw.split(",") if item)
    if annotation.startswith("tuple[int"):
        try:
            return tuple(int(item) for item in raw.split(",") if item)
        except ValueError:
            raise ConfigError(f"--set {key}={raw}: expected comma-separated ints") from None
    try:
        if annotation == "int":
            return int(raw)
        if annotation == "float":
            return float(raw)
    except ValueError:
        raise ConfigError(f"--set {key}={raw}: expected {annotation}") from None
    return raw


__all__ = ["ConfigError", "parse_value"]
