"""The compiled search programs the server holds: ``Shape`` names one (settings, rows, padded lengths),
``TranslatorCache`` keeps one ``Translator`` per (settings, rows), ``warm_up_plan`` lists the shapes compiled
at start-up, most likely asked first first.

The default settings' Translators are kept for good; of other settings, the ``CACHED_SETTINGS`` most recently
used are kept, and the least recently used beyond them is dropped with its programs.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
from typing import Any

from seq2seq_jax.core.batching import round_up
from seq2seq_jax.core.config import DecodeConfig
from seq2seq_jax.decoding.loaded_model import Seq2SeqModel
from seq2seq_jax.decoding.translate import Translator

CACHED_SETTINGS = 8  # non-default decode settings whose Translators (and compiled programs) are kept


class ServerStatus(enum.Enum):
    """``/health``'s ``status``: 503 until the first program is compiled, 200 once ready."""

    WARMING_UP = "warming up"
    READY = "ready"
    FAILED = "warm-up failed"


class WarmupState(enum.Enum):
    """``/health``'s ``warm_up``: where the start-up compilation is."""

    FIRST = "first"  # compiling the first shape; requests wait in the queue
    BACKGROUND = "background"  # ready; the other shapes compile whenever no request is queued
    DONE = "done"
    FAILED = "failed"

    @property
    def status(self) -> ServerStatus:
        return {WarmupState.FIRST: ServerStatus.WARMING_UP,
                WarmupState.FAILED: ServerStatus.FAILED}.get(self, ServerStatus.READY)


@dataclasses.dataclass(frozen=True)
class Shape:
    """One compiled search: its decode settings (``batch_size`` set to the server's ``max_batch``: the row count is
    ``rows``), rows, padded source length, attention kept or not, padded target prefix length (0: none)."""

    settings: DecodeConfig
    rows: int
    src_len: int
    attention: bool = False
    prefix_len: int = 0

    def to_json(self, default_settings: DecodeConfig) -> dict[str, Any]:
        return {"rows": self.rows, "src_len": self.src_len, "attention": self.attention,
                "prefix_len": self.prefix_len, "beam_size": self.settings.beam_size,
                "n_best": self.settings.n_best, "default_settings": self.settings == default_settings}


def warm_up_plan(settings: DecodeConfig, rows: tuple[int, ...], bucket_width: int,
                 warmup_src_len: int) -> list[Shape]:
    """The default settings' shapes compiled at start-up, in the order they are likely asked for: one text per
    source length (shortest first), then the web page's one text with attention, then more rows."""
    widths = range(bucket_width, int(round_up(warmup_src_len, bucket_width)) + 1, bucket_width)
    single = [Shape(settings, rows[0], width) for width in widths]
    page = [Shape(settings, rows[0], width, attention=True) for width in widths]
    merged = [Shape(settings, count, width) for count in rows[1:] for width in widths]
    return single + page + merged


class TranslatorCache:
    """One ``Translator`` (with its compiled programs) per (settings, rows), as the module docstring says."""

    def __init__(self, model: Seq2SeqModel, default_settings: DecodeConfig, compact: bool):
        self.model = model
        self.default_settings = default_settings
        self.compact = compact
        self._translators: collections.OrderedDict[DecodeConfig, dict[int, Translator]] = collections.OrderedDict()

    def settings(self, config: DecodeConfig) -> DecodeConfig:
        """``config`` as the key of its settings: ``batch_size`` is the default's (the row count left out)."""
        return dataclasses.replace(config, batch_size=self.default_settings.batch_size)

    def get(self, config: DecodeConfig, rows: int) -> tuple[Translator, DecodeConfig | None]:
        """The Translator of ``config``'s settings for ``rows`` rows, and the settings dropped to make room (or
        None)."""
        settings = self.settings(config)
        translators = self._translators.setdefault(settings, {})
        self._translators.move_to_end(settings)
        if rows not in translators:
            translators[rows] = self.model.new_translator(dataclasses.replace(config, batch_size=rows),
                                                          compact=self.compact)
        others = [key for key in self._translators if key != self.default_settings]
        dropped = None
        if len(others) > CACHED_SETTINGS:
            dropped = others[0]
            del self._translators[dropped]
        return translators[rows], dropped
