"""``seq2seq serve``: a translation server (FastAPI on uvicorn) with dynamic batching, and its web page.

    POST /v1/translate          {"texts": [...], "prefixes": [...], "beam_size", "n_best", "length_penalty",
                                 "min_len", "no_repeat_ngram_size", "attention"}  (all but texts optional: the
                                 workdir's decode config; prefixes: one target prefix per text, "" for none)
                                 -> {"translations": [[{"text", "score", "attention"?}, ...], ...]}
    POST /translator/translate  OpenNMT-py's onmt_server format: [{"src": "...", "id": 100}, ...] ->
                                 [[{"src", "tgt", "n_best", "pred_score"}, ...per input] ...per n-best rank]
    GET  /health                ready / warming up (503), the loaded step, the compiled shapes
    GET  /v1/info               model and decode config, the checkpoint's validation metrics (every model's for
                                 an ensemble), the limits
    GET  /                      the web page (static/index.html: text box, n-best list, attention heatmap)
    GET  /docs, /redoc          FastAPI's OpenAPI pages (Swagger UI, ReDoc), their scripts served by the server
                                 itself (fastapi-offline), not from a CDN: they work on an offline machine

Models: one workdir (trained, averaged or imported), or several ``--workdir`` decoded as one ensemble, loaded and
searched exactly as ``seq2seq translate --workdir A --workdir B`` does (``seq2seq_jax.load``); the attention the
page draws is the first model's.

Batching: one decoding thread takes requests from a queue. Once it is free and holds the oldest request, it waits
for others with the same decode settings and attention flag (``seconds_to_wait``): ``max_wait_ms`` from when both
the oldest request and the free decoder are there; right after a search with those settings, until as many texts
are queued as that search answered plus those that had queued behind it, for at most ``refill_share`` of that
search's duration (at least ``max_wait_ms``) from its end; never once ``max_batch`` texts are waiting. Clients that
send their next request when answered take a while to do so (HTTP and JSON in Python on both ends); a short fixed
wait starts the next search without them, and then two groups of clients alternate, each waiting for the other's
search, which costs almost what one search of both groups does. The refill wait keeps them in one search. The
decoder waits at most ``max(max_wait_ms, refill_share * the last search's duration)`` past the later of the oldest
request's arrival and the end of the last search. It then takes whole requests in arrival order up to
``max_batch`` texts, and decodes them together in one search, padded to the longest of them (a multiple of
``data.bucket_width``), with the smallest row count of ``row_buckets`` (1, 4, 16, ..., max_batch) that holds them.
Target prefixes are per row, so requests with prefixes merge with the others of the same settings: a batch with any
prefix pads every row's to its longest (rounded up to 8 pieces, "" for a row without one), which adds that width to
the compiled program's key; a prefix longer than its text's output limit is refused with 422 before it is queued. A
row's search does not depend on the other rows' contents, so a text (with its prefix) gets the same tokens whatever
it is merged with (``tests/test_decode.py``); its score is the same up to float32 rounding: XLA:CPU's matmuls round
differently for different row counts and padded lengths, by a few 1e-6 of the score (greedy searches also move
their unfinished rows to smaller loops as rows finish: ``Translator``'s ``compact``). With ``fixed_rows`` every
search has ``max_batch`` rows, does not compact them, and holds texts of one padded source and prefix length, so
every answer is bit-identical to the one the text gets alone, at the price of a lone request paying for
``max_batch`` rows.
The event loop only awaits futures: ``/health`` answers while a batch decodes.

Warm-up: before ``/health`` reports ready, the default settings' searches (without prefixes) are compiled for
every row count and every padded source length up to ``warmup_src_len`` tokens, and with attention (the web page's
request) for one row; other shapes and settings compile on first use. Row counts grow by a factor of four, not
two (4 rather than 7 row counts for 64), to shorten the warm-up, at the price of a batch having up to four times
the rows it needs rather than two. Requests that arrive during warm-up are queued and answered once it is done.
Then the objects the server holds for good (the model, its compiled programs, the tokenizers, the libraries'
own) are collected once and frozen (``gc.freeze``): Python's full garbage collections would otherwise scan them
all, which stopped the server while it served, long enough for the next search to leave without the clients
whose answers were still being sent (docs/benchmarks.md, Serving); ``/health``
reports how many objects are frozen.
One Translator per (settings, rows) is kept; beyond ``CACHED_SETTINGS`` non-default settings the least recently
used one is dropped with its programs.

Limits: nothing in a request names a file, a workdir or code; request bodies over ``max_body_bytes`` get 413;
a request holds at most ``max_texts`` texts of at most ``max_chars`` characters and asks for a beam of at most
``max_beam_size``. Every output is bounded by the decode config's ``max_len_a * source tokens + max_len_b``
(a ``min_len`` beyond it is cut to it), and a source has at most ``max_chars`` characters, so no request decodes
unboundedly. The server binds 127.0.0.1 unless told otherwise. SIGTERM: stop accepting, finish every accepted
request, exit 0. Sampling is not served: a workdir's ``decode.sample`` is ignored here.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import gc
import importlib.resources
import logging
import math
import signal
import threading
import time
from typing import Annotated, Any

import numpy as np
from fastapi import Body, FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from seq2seq_jax.core.batching import round_up
from seq2seq_jax.core.config import ConfigError, DecodeConfig
from seq2seq_jax.decoding.loaded_model import Seq2SeqModel, with_decode_overrides
from seq2seq_jax.decoding.translate import Hypothesis, Translator

logger = logging.getLogger(__name__)

CACHED_SETTINGS = 8  # non-default decode settings whose Translators (and compiled programs) are kept
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

    def __post_init__(self):
        for name in ("max_batch", "max_chars", "max_texts", "max_body_bytes", "max_beam_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0 or self.warmup_src_len < 0 or self.refill_share < 0:
            raise ValueError("--max-wait-ms, --refill-share and --warmup-src-len must be >= 0")


def row_buckets(max_batch: int, fixed_rows: bool = False) -> tuple[int, ...]:
    """Row counts of the compiled searches: the powers of four below ``max_batch``, and ``max_batch``
    (64 -> 1, 4, 16, 64); only ``max_batch`` with ``fixed_rows``."""
    if fixed_rows:
        return (max_batch,)
    return tuple(sorted({max_batch} | {4 ** k for k in range(max_batch.bit_length()) if 4 ** k < max_batch}))


@dataclasses.dataclass(frozen=True)
class LastSearch:
    """The decoder's latest search, as the batching policy sees it (times: ``time.monotonic()``)."""

    key: tuple[DecodeConfig, bool]  # its decode settings and attention flag
    ended: float  # when its answers were handed out and the decoder was free again
    seconds: float  # how long it took
    texts: int  # texts it answered: their clients may send again
    queued: int  # texts with its key already queued when it ended


def seconds_to_wait(now: float, first_enqueued: float, key: tuple[DecodeConfig, bool], waiting: int,
                    last: LastSearch | None, limits: ServeLimits) -> float:
    """How much longer the free decoder waits before taking the batch headed by the oldest request (enqueued at
    ``first_enqueued``, ``waiting`` texts with its ``key`` queued); 0 or less: take it now. The policy (module
    docstring): ``max_wait_ms`` from when both the oldest request and the decoder are there; after a search of the
    same key that ended within its refill window (``refill_share`` of its duration, at least ``max_wait_ms``), up to
    the end of that window, but no longer than until the texts it answered are queued again (with those that
    were queued when it ended); never once ``max_batch`` texts are waiting."""
    if waiting >= limits.max_batch:
        return 0.0
    max_wait = limits.max_wait_ms / 1000.0
    free = last.ended if last is not None else -math.inf
    deadline = max(first_enqueued, free) + max_wait
    if last is not None and last.key == key and last.texts and limits.refill_share:
        refill_end = last.ended + max(max_wait, limits.refill_share * last.seconds)
        if first_enqueued <= refill_end:  # the oldest request came while the answered clients were expected back
            if waiting >= min(limits.max_batch, last.queued + last.texts):
                return 0.0
            deadline = max(deadline, refill_end)
    return deadline - now


@dataclasses.dataclass
class _Job:
    texts: list[str]
    prefixes: list[str] | None  # one target prefix per text ("" for none), or None
    config: DecodeConfig
    attention: bool
    future: concurrent.futures.Future
    enqueued: float

    @property
    def key(self) -> tuple[DecodeConfig, bool]:
        return self.config, self.attention


class BatchingDecoder:
    """Merges concurrent requests into compiled searches on one decoding thread (module docstring)."""

    def __init__(self, model: Seq2SeqModel, limits: ServeLimits):
        self.model = model
        self.limits = limits
        self.default_config = dataclasses.replace(model.decode_config, sample=False, batch_size=limits.max_batch)
        self.rows = row_buckets(limits.max_batch, limits.fixed_rows)
        self.bucket_width = model.models[0].config.data.bucket_width
        self.status = "warming up"
        self.compiled: list[dict[str, Any]] = []
        self._translators: collections.OrderedDict[DecodeConfig, dict[int, Translator]] = collections.OrderedDict()
        self._queue: collections.deque[_Job] = collections.deque()
        self._condition = threading.Condition()
        self._stopping = False
        self._last: LastSearch | None = None  # the latest search (the batching policy's input)
        self.in_flight = 0  # requests accepted and not yet answered
        self.merged_batches = 0  # decoding rounds, each serving ``merged_requests`` / ``merged_batches`` requests
        self.merged_requests = 0
        self._thread = threading.Thread(target=self._run, name="seq2seq-decode", daemon=True)

    # -- the event loop's side ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Finish every queued request, then end the decoding thread."""
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        self._thread.join()

    def submit(self, texts: list[str], config: DecodeConfig, attention: bool,
               prefixes: list[str] | None = None) -> concurrent.futures.Future:
        """Queue ``texts`` (with one target prefix each, or none); the future gets one list of hypotheses (best
        first) per text, in order. Accepted during warm-up too: answered once it is done."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._condition:
            if self._stopping:
                raise RuntimeError("the server is shutting down")
            self._queue.append(_Job(list(texts), None if prefixes is None else list(prefixes), config, attention,
                                    future, time.monotonic()))
            self.in_flight += 1
            self._condition.notify_all()
        return future

    def counts(self) -> dict[str, int]:
        with self._condition:
            return {"queued_texts": sum(len(job.texts) for job in self._queue), "in_flight_requests": self.in_flight,
                    "merged_batches": self.merged_batches, "merged_requests": self.merged_requests}

    def _finished(self, jobs: list[_Job], started: float | None = None) -> None:
        """``jobs`` are answered; with ``started``, by a search that began then (recorded for the policy)."""
        with self._condition:
            self.in_flight -= len(jobs)
            if started is not None and jobs:
                key, now = jobs[0].key, time.monotonic()
                self._last = LastSearch(key, now, now - started, sum(len(job.texts) for job in jobs),
                                        sum(len(job.texts) for job in self._queue if job.key == key))

    # -- the decoding thread -----------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._warm_up()
            gc.collect()
            gc.freeze()  # out of the full collections' sight: the long-lived objects (module docstring)
            self.status = "ready"
        except Exception as error:  # reported by /health; requests still get their own errors
            logger.exception("warm-up failed")
            self.status = f"warm-up failed: {error}"
        while (jobs := self._next_jobs()) is not None:
            running, abandoned = [], []  # a client that went away cancelled its future
            for job in jobs:
                (running if job.future.set_running_or_notify_cancel() else abandoned).append(job)
            self._finished(abandoned)
            jobs = running
            if not jobs:
                continue
            self.merged_batches += 1
            self.merged_requests += len(jobs)
            started = time.monotonic()
            prefixes = None  # one per text of the batch when any request has them
            if any(job.prefixes is not None for job in jobs):
                prefixes = [prefix for job in jobs for prefix in (job.prefixes or [""] * len(job.texts))]
            try:
                results = self._translate([text for job in jobs for text in job.texts], prefixes, *jobs[0].key)
            except Exception as error:  # every request of the batch gets the error
                logger.exception("decoding failed")
                for job in jobs:
                    job.future.set_exception(error)
                self._finished(jobs, started)
                continue
            start = 0
            for job in jobs:
                job.future.set_result(results[start: start + len(job.texts)])
                start += len(job.texts)
            self._finished(jobs, started)

    def _warm_up(self) -> None:
        widths = range(self.bucket_width, round_up(self.limits.warmup_src_len, self.bucket_width) + 1,
                       self.bucket_width)
        shapes = [(rows, width, False) for width in widths for rows in self.rows]
        shapes += [(self.rows[0], width, True) for width in widths]  # the web page's single text
        logger.info("warm-up: compiling %d search programs (rows %s, source lengths %s; with attention: %d rows)",
                    len(shapes), list(self.rows), list(widths), self.rows[0])
        start = time.perf_counter()
        for rows, width, attention in shapes:
            if self._stopping:
                return
            self._translator(self.default_config, rows).warm_up(width, with_attention=attention)
            self._record(self.default_config, rows, width, attention)
        logger.info("warm-up done in %.1f s: %d programs", time.perf_counter() - start, len(self.compiled))

    def _next_jobs(self) -> list[_Job] | None:
        """The next batch: the oldest request and, after waiting for more as ``seconds_to_wait`` says, every
        later one with the same settings, in order, while the texts fit in ``max_batch``. None once stopped and
        empty."""
        with self._condition:
            while not self._queue:
                if self._stopping:
                    return None
                self._condition.wait()
            first = self._queue[0]
            while not self._stopping:
                waiting = sum(len(job.texts) for job in self._queue if job.key == first.key)
                remaining = seconds_to_wait(time.monotonic(), first.enqueued, first.key, waiting, self._last,
                                            self.limits)
                if remaining <= 0:
                    break
                self._condition.wait(remaining)
            jobs, total = [], 0
            for job in list(self._queue):
                if job.key != first.key:
                    continue
                if jobs and total + len(job.texts) > self.limits.max_batch:
                    break
                jobs.append(job)
                total += len(job.texts)
                self._queue.remove(job)
            return jobs

    def _translate(self, texts: list[str], prefixes: list[str] | None, config: DecodeConfig,
                   attention: bool) -> list[list[Hypothesis]]:
        """Decode ``texts`` (at most ``max_batch`` per search) with the smallest row count that holds them, padded
        to their longest source and their longest target prefix (rounded up to 8 pieces; none without prefixes);
        with ``fixed_rows``, ``max_batch`` rows and one search per padded source and prefix length."""
        tokenizer = self.model.src_tokenizer
        widths = [int(round_up(len(tokenizer.encode(text)) + 1, self.bucket_width)) for text in texts]
        prefix_widths = [0] * len(texts)
        if prefixes is not None:
            prefix_widths = [int(round_up(len(self.model.tgt_tokenizer.encode(prefix)), 8)) if text.strip() else 0
                             for text, prefix in zip(texts, prefixes, strict=True)]
        shapes = list(zip(widths, prefix_widths, strict=True))
        groups = [list(range(len(texts)))]
        if self.limits.fixed_rows:
            groups = [[index for index, s in enumerate(shapes) if s == shape] for shape in sorted(set(shapes))]
        results: list[list[Hypothesis] | None] = [None] * len(texts)
        for group in groups:
            group.sort(key=lambda index: widths[index])  # the Translator's own batches, made here to record them
            for start in range(0, len(group), self.limits.max_batch):
                chunk = group[start: start + self.limits.max_batch]
                rows = next(r for r in self.rows if r >= len(chunk))
                outputs = self._translator(config, rows).translate(
                    [texts[i] for i in chunk], with_attention=attention,
                    prefixes=None if prefixes is None else [prefixes[i] for i in chunk], prefix_name="prefixes")
                translated = [i for i in chunk if texts[i].strip()]  # blank texts are not decoded
                if translated:
                    self._record(config, rows, widths[translated[-1]], attention,
                                 max(prefix_widths[i] for i in translated))
                for index, hypotheses in zip(chunk, outputs, strict=True):
                    results[index] = hypotheses
        return results  # type: ignore[return-value]

    def _settings(self, config: DecodeConfig) -> DecodeConfig:
        """``config`` as the key of its settings (the row count left out)."""
        return dataclasses.replace(config, batch_size=self.limits.max_batch)

    def _translator(self, config: DecodeConfig, rows: int) -> Translator:
        settings = self._settings(config)
        translators = self._translators.setdefault(settings, {})
        self._translators.move_to_end(settings)
        if rows not in translators:
            translators[rows] = self.model.new_translator(dataclasses.replace(config, batch_size=rows),
                                                          compact=not self.limits.fixed_rows)
        others = [key for key in self._translators if key != self.default_config]
        if len(others) > CACHED_SETTINGS:  # drop the least recently used settings with their programs
            del self._translators[others[0]]
            self.compiled = [entry for entry in self.compiled if entry["settings"] != others[0]]
        return translators[rows]

    def _record(self, config: DecodeConfig, rows: int, width: int, attention: bool, prefix_width: int = 0) -> None:
        settings = self._settings(config)
        shape = {"rows": rows, "src_len": width, "attention": attention, "prefix_len": prefix_width}
        if not any(entry["settings"] == settings and all(entry[k] == v for k, v in shape.items())
                   for entry in self.compiled):
            self.compiled.append({"settings": settings, **shape})
            if self.status == "ready":  # compiled on first use, after the warm-up
                logger.info("compiled a search for %d rows, sources of %d tokens, beam %d%s%s", rows, width,
                            config.beam_size, ", with attention" if attention else "",
                            f", target prefixes of {prefix_width} pieces" if prefix_width else "")


# -- requests and answers ---------------------------------------------------------------------------------------


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


class OnmtItem(BaseModel):
    """One input of OpenNMT-py's ``/translator/translate``; ``id`` names the model there (one is served here)."""

    model_config = ConfigDict(extra="ignore")
    src: StrictStr
    id: StrictInt = ONMT_ID


def _hypothesis_json(model: Seq2SeqModel, source: str, hypothesis: Hypothesis) -> dict[str, Any]:
    answer: dict[str, Any] = {"text": hypothesis.text, "score": hypothesis.score}
    if hypothesis.attention is not None:
        weights = hypothesis.attention
        target = model.tgt_tokenizer.pieces(hypothesis.tokens)
        target += ["</s>"] * (weights.shape[0] - len(target))  # the EOS step, when the hypothesis has one
        answer["attention"] = {"source": model.src_tokenizer.pieces(model.src_tokenizer.encode(source)) + ["</s>"],
                               "target": target, "weights": np.round(weights.astype(np.float64), 5).tolist()}
    return answer


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


class BodySizeLimit:
    """ASGI middleware: a request body over ``max_bytes`` (declared or streamed) gets 413 before any handler."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = _error(413, f"request body over the {self.max_bytes}-byte limit of this server "
                                "(seq2seq serve --max-body-bytes)")
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await too_large(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await too_large(scope, receive, send)
            more = message.get("more_body", False)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


def create_app(model: Seq2SeqModel, limits: ServeLimits) -> FastAPI:
    """The FastAPI application serving ``model`` (its decoding thread starts and stops with the app)."""
    decoder = BatchingDecoder(model, limits)
    prefix_checker = model.new_translator(decoder.default_config)  # never decodes: checks prefixes' lengths
    page = importlib.resources.files("seq2seq_jax.serving").joinpath("static", "index.html").read_text(encoding="utf-8")

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        decoder.start()
        yield
        await asyncio.to_thread(decoder.stop)

    app = FastAPIOffline(title="seq2seq-jax translation server", version="1", lifespan=lifespan,
                         description="Translate with a seq2seq-jax workdir. Concurrent requests are merged into "
                                     "one compiled search; every answer equals the one its text gets alone.")
    app.add_middleware(BodySizeLimit, max_bytes=limits.max_body_bytes)
    app.state.decoder = decoder
    first = model.models[0]  # an ensemble's first model gives the tokenizers, decode defaults and attention

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError):
        content_type = request.headers.get("content-type", "")
        if request.method == "POST" and "json" not in content_type:
            return _error(415, f"the request body must be JSON sent with Content-Type: application/json "
                               f"(got {content_type or 'no Content-Type'})")
        problems = jsonable_encoder(error.errors())
        if any(problem.get("type") == "json_invalid" for problem in problems):
            return _error(400, "malformed JSON: " + "; ".join(p.get("ctx", {}).get("error", p["msg"])
                                                               for p in problems), detail=problems)
        message = "; ".join(f"{'.'.join(str(part) for part in p['loc'][1:]) or 'body'}: {p['msg']}" for p in problems)
        return _error(422, message, detail=problems)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, error: HTTPException):
        return _error(error.status_code, str(error.detail))

    @app.exception_handler(Exception)
    async def internal_error(_request: Request, error: Exception):
        return _error(500, f"internal error: {type(error).__name__}: {error}")

    def check_lengths(name: str, texts: list[str]) -> None:
        for index, text in enumerate(texts):
            if len(text) > limits.max_chars:
                raise HTTPException(422, f"{name}.{index}: {len(text)} characters, more than this server's limit "
                                         f"of {limits.max_chars}")

    def checked_config(texts: list[str], **settings: Any) -> DecodeConfig:
        if len(texts) > limits.max_texts:
            raise HTTPException(422, f"texts: {len(texts)} texts, more than this server's limit of "
                                     f"{limits.max_texts} per request")
        check_lengths("texts", texts)
        try:
            config = with_decode_overrides(decoder.default_config, **settings)
        except ConfigError as error:
            raise HTTPException(422, str(error)) from None
        largest = max(limits.max_beam_size, decoder.default_config.beam_size)
        if config.beam_size > largest:
            raise HTTPException(422, f"beam_size: {config.beam_size} is more than this server's limit of {largest}")
        return config

    def check_prefixes(texts: list[str], prefixes: list[str]) -> None:
        """One prefix per text, each within ``max_chars`` and its text's output limit (the decode config's
        ``max_len_a * source tokens + max_len_b``, which requests cannot change)."""
        if len(prefixes) != len(texts):
            raise HTTPException(422, f"prefixes: {len(prefixes)} prefixes for {len(texts)} texts: give one per text "
                                     '("" for none)')
        check_lengths("prefixes", prefixes)
        try:
            prefix_checker.encode_prefixes(texts, prefixes, prefix_name="prefixes")
        except ValueError as error:
            raise HTTPException(422, str(error)) from None

    async def translate(texts: list[str], config: DecodeConfig, attention: bool,
                        prefixes: list[str] | None = None) -> list[list[Hypothesis]]:
        try:
            future = decoder.submit(texts, config, attention, prefixes)
        except RuntimeError as error:
            raise HTTPException(503, str(error)) from None
        return await asyncio.wrap_future(future)

    @app.post("/v1/translate")
    async def translate_v1(request: TranslateRequest) -> dict[str, Any]:
        """Per text, in order, its hypotheses best first: text, score and, when asked, the attention weights
        ``[target pieces (+ </s>), source pieces + </s>]`` with the pieces they refer to. ``prefixes``: one target
        prefix per text (``""`` for none) that each of its hypotheses starts with (included in text and score)."""
        settings = request.model_dump(exclude={"texts", "prefixes", "attention"}, exclude_none=True)
        config = checked_config(request.texts, **settings)
        if request.prefixes is not None:
            check_prefixes(request.texts, request.prefixes)
        results = await translate(request.texts, config, request.attention, request.prefixes)
        return {"translations": [[_hypothesis_json(model, text, h) for h in hypotheses]
                                 for text, hypotheses in zip(request.texts, results, strict=True)]}

    @app.post("/translator/translate")
    async def translate_onmt(items: Annotated[list[OnmtItem], Body(min_length=1)]) -> list[list[dict[str, Any]]]:
        """OpenNMT-py's ``onmt_server`` answer: one list per n-best rank, each with one entry per input. A blank
        source is not translated: its ``tgt`` is empty and its ``pred_score`` 0 (the log-probability of nothing)."""
        texts = [item.src for item in items]
        config = checked_config(texts)
        results = await translate(texts, config, False)

        def entry(text: str, hypotheses: list[Hypothesis], rank: int) -> dict[str, Any]:
            hypothesis = hypotheses[rank] if hypotheses else Hypothesis("", [], 0.0)
            return {"src": text, "tgt": hypothesis.text, "n_best": config.n_best, "pred_score": hypothesis.score}

        return [[entry(text, hypotheses, rank) for text, hypotheses in zip(texts, results, strict=True)]
                for rank in range(config.n_best)]

    @app.get("/health")
    async def health() -> JSONResponse:
        """``ready`` (200) or ``warming up`` (503; requests are queued meanwhile and answered after it), the
        loaded step (the first model's; ``steps``: every model's) and the compiled search shapes."""
        shapes = [{"rows": entry["rows"], "src_len": entry["src_len"], "attention": entry["attention"],
                   "prefix_len": entry["prefix_len"], "beam_size": entry["settings"].beam_size,
                   "n_best": entry["settings"].n_best,
                   "default_settings": entry["settings"] == decoder.default_config} for entry in decoder.compiled]
        body = {"status": decoder.status, "step": first.step, "steps": [m.step for m in model.models],
                "compiled_programs": len(shapes),
                "compiled": shapes, "row_buckets": list(decoder.rows), "gc_frozen_objects": gc.get_freeze_count(),
                **decoder.counts()}
        return JSONResponse(body, status_code=200 if decoder.status == "ready" else 503)

    @app.get("/v1/info")
    async def info() -> dict[str, Any]:
        """The model and default decode configuration, the checkpoint's step and validation metrics, the limits;
        ``models``: those of every model of an ensemble (``model``, ``step`` and ``metrics``: the first's)."""
        decode = {k: v for k, v in decoder.default_config.to_dict().items()
                  if k not in ("sample", "temperature", "top_k", "top_p", "seed", "batch_size")}
        models = [{"workdir": name, "model": m.config.model.to_dict(), "step": m.step,
                   "metrics": {k: v for k, v in m.metrics.items() if math.isfinite(v)}}
                  for name, m in zip(model.names, model.models, strict=True)]
        return {**{k: models[0][k] for k in ("model", "step", "metrics")}, "decode": decode,
                "ensemble": model.is_ensemble, "models": models, "tokenizer": first.config.data.tokenizer,
                "bucket_width": decoder.bucket_width, "row_buckets": list(decoder.rows),
                "limits": dataclasses.asdict(limits)}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    return app


def serve(model: Seq2SeqModel, host: str, port: int, limits: ServeLimits) -> int:
    """Warm ``model`` up in the background and serve it until SIGTERM/SIGINT; returns 0 after a graceful
    shutdown."""
    import uvicorn

    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("seq2seq serve: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    for name, trained in zip(model.names, model.models, strict=True):
        logger.info("loaded step %d of %s", trained.step, name)
    if model.is_ensemble:
        logger.info("serving an ensemble of %d models", len(model.models))
    app = create_app(model, limits)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="info", access_log=False,
                                           timeout_graceful_shutdown=None))
    # uvicorn re-raises the signal it shut down on once it is done; these handlers absorb it, so the process
    # exits 0 after a graceful shutdown rather than being killed by the default handler.
    for handled in (signal.SIGTERM, signal.SIGINT):
        signal.signal(handled, lambda *_: None)
    server.run()
    return 0 if server.started else 1
