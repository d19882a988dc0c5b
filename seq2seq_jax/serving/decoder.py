"""The batching decoder: one thread takes requests from a queue and merges those with the same decode settings
and attention flag into compiled searches (``seq2seq_jax.serving.policy`` says how long it waits for more).

A batch takes whole requests in arrival order up to ``max_batch`` texts, padded to their longest source (and,
with any prefix, every row's prefix to the longest, rounded up to 8 pieces), with the smallest row count of
``row_buckets`` that holds them. A text gets the same tokens whatever it is merged with, and its score up to
float32 rounding; with ``fixed_rows`` every search has ``max_batch`` rows, uncompacted, and one padded source and
prefix length, so every answer is bit-identical to the one the text gets alone.

Warm-up: the thread compiles the first shape of ``warm_up_plan`` (one short text, default settings, fewest rows),
and the server is ready; the other shapes compile one at a time whenever no request is queued, so a request
waits for at most the one in progress; a shape not compiled yet compiles on first use. Once all are compiled,
the long-lived objects are collected once and frozen (``gc.freeze``) out of the full collections' sight.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import gc
import logging
import math
import threading
import time
from typing import Any

from seq2seq_jax.core.batching import round_up
from seq2seq_jax.core.config import DecodeConfig
from seq2seq_jax.decoding.loaded_model import Seq2SeqModel
from seq2seq_jax.decoding.translate import Hypothesis, Translator
from seq2seq_jax.serving.metrics import ServeMetrics
from seq2seq_jax.serving.policy import LastSearch, row_buckets, seconds_to_wait
from seq2seq_jax.serving.programs import ServerStatus, Shape, TranslatorCache, WarmupState, warm_up_plan
from seq2seq_jax.serving.schema import ServeLimits

logger = logging.getLogger(__name__)


class QueueFull(Exception):
    """``submit`` refused: the texts would take the queue past ``max_queue``; ``retry_after``: seconds to wait."""

    def __init__(self, queued: int, limit: int, retry_after: int):
        super().__init__(f"{queued} texts are waiting, the most this server queues is {limit} (seq2seq serve "
                         f"--max-queue): retry after {retry_after} s")
        self.retry_after = retry_after


@dataclasses.dataclass
class Job:
    """One accepted request: its texts (and one target prefix each, or None), settings, target language (None
    for a model without tags) and answer; requests merge into one search when their ``key`` is the same."""

    texts: list[str]
    prefixes: list[str] | None
    config: DecodeConfig
    attention: bool
    future: concurrent.futures.Future
    enqueued: float
    tgt_lang: str | None = None

    @property
    def key(self) -> tuple[DecodeConfig, bool, str | None]:
        return self.config, self.attention, self.tgt_lang


class BatchingDecoder:
    """Merges concurrent requests into compiled searches on one decoding thread (module docstring)."""

    def __init__(self, model: Seq2SeqModel, limits: ServeLimits):
        self.model = model
        self.limits = limits
        self.default_config = dataclasses.replace(model.decode_config, sample=False, batch_size=limits.max_batch)
        self.rows = row_buckets(limits.max_batch, limits.fixed_rows)
        self.bucket_width = model.models[0].config.data.bucket_width
        self.metrics = ServeMetrics(self.rows)
        self.metrics.watch_queue(lambda: self.counts()["queued_texts"])
        self.warm_up_state = WarmupState.FIRST
        self.warm_up_error = ""
        self._translators = TranslatorCache(model, self.default_config, compact=not limits.fixed_rows)
        self._compiled: dict[Shape, None] = {}  # in order of compilation
        self._warming: list[Shape] = warm_up_plan(self.default_config, self.rows, self.bucket_width,
                                                  limits.warmup_src_len)
        self._queue: collections.deque[Job] = collections.deque()
        self._condition = threading.Condition()
        self._stopping = False
        self._last: LastSearch | None = None  # the latest search (the batching policy's input)
        self.in_flight = 0  # requests accepted and not yet answered
        self.merged_batches = 0  # decoding rounds, each serving ``merged_requests`` / ``merged_batches`` requests
        self.merged_requests = 0
        self.refused_requests = 0  # refused with the queue full (429)
        self.cancelled_requests = 0  # timed out or abandoned by their clients before their search began
        self._thread = threading.Thread(target=self._run, name="seq2seq-decode", daemon=True)

    # -- the event loop's side ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Finish every queued request (not the warm-up), then end the decoding thread; after ``timeout`` seconds
        the requests still queued are cancelled and a search still running is left to the (daemon) thread."""
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        self._thread.join(timeout)
        if self._thread.is_alive():
            with self._condition:
                dropped = [job for job in self._queue if job.future.cancel()]
                self._queue.clear()
            logger.warning("shutdown timeout: %d queued requests dropped, a search left running", len(dropped))

    def submit(self, texts: list[str], config: DecodeConfig, attention: bool,
               prefixes: list[str] | None = None, tgt_lang: str | None = None) -> concurrent.futures.Future:
        """Queue ``texts`` (with one target prefix each, or none); the future gets one list of hypotheses (best
        first) per text, in order. Accepted during warm-up too: answered once the first shape is compiled.
        Raises ``QueueFull`` (nothing queued) when the texts would take the queue past ``max_queue`` texts."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._condition:
            if self._stopping:
                raise RuntimeError("the server is shutting down")
            queued = sum(len(job.texts) for job in self._queue)
            if queued + len(texts) > self.limits.max_queue:
                self.refused_requests += 1
                raise QueueFull(queued, self.limits.max_queue, self._retry_after(queued))
            self._queue.append(Job(list(texts), None if prefixes is None else list(prefixes), config, attention,
                                   future, time.monotonic(), tgt_lang))
            self.in_flight += 1
            self._condition.notify_all()
        return future

    def withdraw(self, future: concurrent.futures.Future) -> bool:
        """Cancel the request of ``future`` if its search has not begun (it leaves the queue at once); False if it
        has (its answer will be dropped)."""
        with self._condition:
            for job in self._queue:
                if job.future is future:
                    if not future.cancel():
                        return False
                    self._queue.remove(job)
                    self.in_flight -= 1
                    self.cancelled_requests += 1
                    return True
        return False

    def _retry_after(self, queued: int) -> int:
        """Whole seconds until the queue has room, guessed from the last search (1 before any)."""
        seconds = self._last.seconds if self._last is not None else 1.0
        return max(1, math.ceil(seconds * (queued / self.limits.max_batch + 1)))

    @property
    def status(self) -> ServerStatus:
        return self.warm_up_state.status

    def shapes(self) -> dict[str, Any]:
        """``/health``'s view of the programs: those compiled, those the warm-up has still to compile."""
        with self._condition:
            compiled, warming = list(self._compiled), list(self._warming)
        return {"compiled": [shape.to_json(self.default_config) for shape in compiled],
                "warming": [shape.to_json(self.default_config) for shape in warming]}

    def counts(self) -> dict[str, int]:
        with self._condition:
            return {"queued_texts": sum(len(job.texts) for job in self._queue), "in_flight_requests": self.in_flight,
                    "merged_batches": self.merged_batches, "merged_requests": self.merged_requests,
                    "refused_requests": self.refused_requests, "cancelled_requests": self.cancelled_requests}

    # -- the decoding thread -----------------------------------------------------------------------------------

    def _run(self) -> None:
        start = time.perf_counter()
        logger.info("warm-up: %d search programs (rows %s, source lengths up to %d; with attention: %d rows), "
                    "ready after the first", len(self._warming), list(self.rows), self.limits.warmup_src_len,
                    self.rows[0])
        self._warm_next(start)
        while True:
            if self._idle() and self._warm_next(start):
                continue
            jobs = self._next_jobs()
            if jobs is None:
                return
            self._serve(jobs)

    def _idle(self) -> bool:
        with self._condition:
            return not self._queue and not self._stopping

    def _warm_next(self, start: float) -> bool:
        """Compile the next shape of the warm-up (after the last, freeze the collector); False when the warm-up is
        over or failed."""
        if self.warm_up_state not in (WarmupState.FIRST, WarmupState.BACKGROUND):
            return False
        try:
            if self._warming:
                shape = self._warming[0]
                translator = self._translator(shape.settings, shape.rows)
                translator.warm_up(shape.src_len, with_attention=shape.attention)
                self._record(shape, warm_up=True)
        except Exception as error:  # reported by /health; requests still get their own errors
            logger.exception("warm-up failed")
            with self._condition:
                self._warming.clear()
            self.warm_up_error, self.warm_up_state = str(error), WarmupState.FAILED
            return False
        if self.warm_up_state is WarmupState.FIRST:
            logger.info("ready after %.1f s of warm-up", time.perf_counter() - start)
            self.metrics.time_to_ready.set(time.perf_counter() - start)
        if self._warming:
            self.warm_up_state = WarmupState.BACKGROUND
            return True
        gc.collect()
        gc.freeze()  # out of the full collections' sight: the long-lived objects (module docstring)
        self.warm_up_state = WarmupState.DONE
        logger.info("warm-up done in %.1f s: %d programs", time.perf_counter() - start, len(self._compiled))
        return True

    def _serve(self, jobs: list[Job]) -> None:
        """Decode ``jobs`` in one batch and hand out their answers (or the error)."""
        running, abandoned = [], []  # a client that went away cancelled its future
        for job in jobs:
            (running if job.future.set_running_or_notify_cancel() else abandoned).append(job)
        self._finished(abandoned, cancelled=True)
        if not running:
            return
        self.merged_batches += 1
        self.merged_requests += len(running)
        started = time.monotonic()
        prefixes = None  # one per text of the batch when any request has them
        if any(job.prefixes is not None for job in running):
            prefixes = [prefix for job in running for prefix in (job.prefixes or [""] * len(job.texts))]
        try:
            results = self._translate([text for job in running for text in job.texts], prefixes, *running[0].key)
        except Exception as error:  # every request of the batch gets the error
            logger.exception("decoding failed")
            for job in running:
                job.future.set_exception(error)
        else:
            offset = 0
            for job in running:
                job.future.set_result(results[offset: offset + len(job.texts)])
                offset += len(job.texts)
        self._finished(running, started)

    def _finished(self, jobs: list[Job], started: float | None = None, cancelled: bool = False) -> None:
        """``jobs`` are answered (or, ``cancelled``, were abandoned); with ``started``, by a search that began then
        (recorded for the policy)."""
        with self._condition:
            self.in_flight -= len(jobs)
            if cancelled:
                self.cancelled_requests += len(jobs)
            if started is not None and jobs:
                key, now = jobs[0].key, time.monotonic()
                self._last = LastSearch(key, now, now - started, sum(len(job.texts) for job in jobs),
                                        sum(len(job.texts) for job in self._queue if job.key == key))

    def _next_jobs(self) -> list[Job] | None:
        """The next batch: the oldest request and, after waiting for more as ``seconds_to_wait`` says, every
        later one with the same settings, in order, while the texts fit in ``max_batch``. None once stopped and
        empty."""
        with self._condition:
            while not self._queue:
                if self._stopping:
                    return None
                if self.warm_up_state is WarmupState.BACKGROUND:
                    return []  # idle: back to the warm-up
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
                   attention: bool, tgt_lang: str | None = None) -> list[list[Hypothesis]]:
        """Decode ``texts`` (at most ``max_batch`` per search) with the smallest row count that holds them, padded
        to their longest source and their longest target prefix (rounded up to 8 pieces; none without prefixes);
        with ``fixed_rows``, ``max_batch`` rows and one search per padded source and prefix length. The languages
        of a multilingual model share the searches (only the source tag differs)."""
        tokenizer = self.model.source_tokenizer(tgt_lang)
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
                searched = time.perf_counter()
                outputs = self._translator(config, rows).with_source_tokenizer(tokenizer).translate(
                    [texts[i] for i in chunk], with_attention=attention,
                    prefixes=None if prefixes is None else [prefixes[i] for i in chunk], prefix_name="prefixes")
                self.metrics.search(rows, time.perf_counter() - searched)
                translated = [i for i in chunk if texts[i].strip()]  # blank texts are not decoded
                if translated:
                    self._record(Shape(self._translators.settings(config), rows, widths[translated[-1]], attention,
                                       max(prefix_widths[i] for i in translated)))
                for index, hypotheses in zip(chunk, outputs, strict=True):
                    results[index] = hypotheses
        return results  # type: ignore[return-value]

    def _translator(self, config: DecodeConfig, rows: int) -> Translator:
        translator, dropped = self._translators.get(config, rows)
        if dropped is not None:  # its programs went with it
            with self._condition:
                self._compiled = {shape: None for shape in self._compiled if shape.settings != dropped}
        return translator

    def _record(self, shape: Shape, warm_up: bool = False) -> None:
        """``shape`` is compiled: listed by ``/health``, and no longer to be warmed up."""
        with self._condition:
            new = shape not in self._compiled
            self._compiled[shape] = None
            if shape in self._warming:
                self._warming.remove(shape)
        if new:
            self.metrics.compilations.inc()
        if new and not warm_up:  # compiled on first use
            logger.info("compiled a search for %d rows, sources of %d tokens, beam %d%s%s", shape.rows,
                        shape.src_len, shape.settings.beam_size, ", with attention" if shape.attention else "",
                        f", target prefixes of {shape.prefix_len} pieces" if shape.prefix_len else "")
