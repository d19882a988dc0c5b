"""What a request may be: the server's limits (``ServeLimits``, the ``seq2seq serve`` options), the request bodies
(pydantic models; their violations get 422 from FastAPI) and the checks beyond the schema (``RequestChecks``:
counts, lengths, beam size, prefixes), which raise ``HTTPException(422)`` naming the field.

Nothing in a request names a file, a workdir or code. Every output is bounded by the decode config's
``max_len_a * source tokens + max_len_b`` and every source by ``max_chars``, so no request decodes unboundedly.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from fastapi import HTTPException
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from seq2seq_jax.core.config import ConfigError, DecodeConfig
from seq2seq_jax.core.languages import LanguageError, Languages
from seq2seq_jax.decoding.loaded_model import with_decode_overrides
from seq2seq_jax.decoding.translate import Translator

ONMT_ID = 100  # the model id OpenNMT-py's example configuration uses; any id is accepted (one model served)


@dataclasses.dataclass(frozen=True)
class ServeLimits:
    """What one request may ask for, and how requests are merged (the ``seq2seq serve`` options)."""

    max_batch: int = 64
    max_wait_ms: float = 10.0
    refill_share: float = 0.25
    max_chars: int = 2000
    max_texts: int = 64
    max_body_bytes: int = 1 << 20
    max_beam_size: int = 16
    warmup_src_len: int = 32
    fixed_rows: bool = False
    max_queue: int = 256  # texts waiting for a search; past it, 429
    request_timeout: float = 60.0  # seconds from acceptance to answer; past it, 503 (0: none)
    shutdown_timeout: float = 30.0  # seconds from SIGTERM until requests still unanswered get 503 (0: none)

    def __post_init__(self):
        for name in ("max_batch", "max_chars", "max_texts", "max_body_bytes", "max_beam_size", "max_queue"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if min(self.max_wait_ms, self.warmup_src_len, self.refill_share, self.request_timeout,
               self.shutdown_timeout) < 0:
            raise ValueError("--max-wait-ms, --refill-share, --warmup-src-len, --request-timeout and "
                             "--shutdown-timeout must be >= 0")


class TranslateRequest(BaseModel):
    """``POST /v1/translate``: the texts and, optionally, decode settings (default: the workdir's)."""

    model_config = ConfigDict(extra="forbid")
    texts: list[StrictStr] = Field(min_length=1)
    prefixes: list[StrictStr] | None = None
    beam_size: StrictInt | None = Field(None, ge=1)
    n_best: StrictInt | None = Field(None, ge=1)
    length_penalty: float | None = Field(None, strict=True, allow_inf_nan=False)
    min_len: StrictInt | None = Field(None, ge=0)
    no_repeat_ngram_size: StrictInt | None = Field(None, ge=0)
    attention: StrictBool = False
    tgt_lang: StrictStr | None = None  # the target language of a multilingual model


class ScorePair(BaseModel):
    """One pair of ``POST /v1/score``: a source and the target to score against it."""

    model_config = ConfigDict(extra="forbid")
    src: StrictStr
    tgt: StrictStr


class ScoreRequest(BaseModel):
    """``POST /v1/score``: the pairs to score by forced decoding, as ``seq2seq score`` does."""

    model_config = ConfigDict(extra="forbid")
    pairs: list[ScorePair] = Field(min_length=1)
    tgt_lang: StrictStr | None = None


class OnmtItem(BaseModel):
    """One input of OpenNMT-py's ``/translator/translate``; ``id`` names the model there (one is served here)."""

    model_config = ConfigDict(extra="ignore")
    src: StrictStr
    id: StrictInt = ONMT_ID


class RequestChecks:
    """The checks of a request that its schema cannot express; each failure is an ``HTTPException(422)``.
    ``prefix_checker`` never decodes: it measures prefixes against their texts' output limits."""

    def __init__(self, limits: ServeLimits, default_config: DecodeConfig, prefix_checker: Translator,
                 languages: Languages | None = None):
        self.limits = limits
        self.default_config = default_config
        self.prefix_checker = prefix_checker
        self.languages = languages or Languages({})

    def language(self, tgt_lang: str | None) -> str | None:
        """The request's target language, resolved (``Languages.resolve``); a missing or unknown one is 422."""
        try:
            return self.languages.resolve(tgt_lang)
        except LanguageError as error:
            raise HTTPException(422, f"tgt_lang: {error}") from None

    def lengths(self, name: str, texts: list[str]) -> None:
        for index, text in enumerate(texts):
            if len(text) > self.limits.max_chars:
                raise HTTPException(422, f"{name}.{index}: {len(text)} characters, more than this server's limit "
                                         f"of {self.limits.max_chars}")

    def config(self, texts: list[str], **settings: Any) -> DecodeConfig:
        """The decode settings of a request for ``texts`` (the server's defaults with ``settings`` changed)."""
        if len(texts) > self.limits.max_texts:
            raise HTTPException(422, f"texts: {len(texts)} texts, more than this server's limit of "
                                     f"{self.limits.max_texts} per request")
        self.lengths("texts", texts)
        try:
            config = with_decode_overrides(self.default_config, **settings)
        except ConfigError as error:
            raise HTTPException(422, str(error)) from None
        largest = max(self.limits.max_beam_size, self.default_config.beam_size)
        if config.beam_size > largest:
            raise HTTPException(422, f"beam_size: {config.beam_size} is more than this server's limit of {largest}")
        return config

    def pairs(self, pairs: list[ScorePair]) -> None:
        """At most ``max_texts`` pairs, each side within ``max_chars``."""
        if len(pairs) > self.limits.max_texts:
            raise HTTPException(422, f"pairs: {len(pairs)} pairs, more than this server's limit of "
                                     f"{self.limits.max_texts} per request")
        for index, pair in enumerate(pairs):
            for side in ("src", "tgt"):
                if len(getattr(pair, side)) > self.limits.max_chars:
                    raise HTTPException(422, f"pairs.{index}.{side}: {len(getattr(pair, side))} characters, more "
                                             f"than this server's limit of {self.limits.max_chars}")

    def prefixes(self, texts: list[str], prefixes: list[str]) -> None:
        """One prefix per text, each within ``max_chars`` and its text's output limit (the decode config's
        ``max_len_a * source tokens + max_len_b``, which requests cannot change)."""
        if len(prefixes) != len(texts):
            raise HTTPException(422, f"prefixes: {len(prefixes)} prefixes for {len(texts)} texts: give one per text "
                                     '("" for none)')
        self.lengths("prefixes", prefixes)
        try:
            self.prefix_checker.encode_prefixes(texts, prefixes, prefix_name="prefixes")
        except ValueError as error:
            raise HTTPException(422, str(error)) from None
