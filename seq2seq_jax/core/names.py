"""The closest known name to a misspelled one, for error messages (``did you mean 'beam_size'?``)."""

from __future__ import annotations

import difflib


def closest(name: str, known) -> str | None:
    """The one of ``known`` that a misspelled ``name`` most likely meant, or None."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    if not close:  # a looser match that starts like the name given ('beem' -> 'beam_size')
        close = [candidate for candidate in difflib.get_close_matches(name, list(known), n=3, cutoff=0.45)
                 if candidate[:1] == name[:1]]
    return close[0] if close else None


def did_you_mean(name: str, known) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``known`` to a misspelled ``name``, or ``""``."""
    match = closest(name, known)
    return f" (did you mean {match!r}?)" if match else ""


__all__ = ["closest", "did_you_mean"]
