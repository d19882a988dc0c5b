"""What the server measures: ``ServeMetrics`` holds the Prometheus metrics of one server (its own registry;
``/metrics`` answers them in Prometheus' text format), ``AccessLog`` is the ASGI middleware that counts every
answer by route and status and logs one line per request through ``logging`` (``seq2seq_jax.serving.access_log``;
off with ``--quiet``): method, route, status, texts, seconds and request id.

Routes are labelled by their template (``/v1/translate``), a path no route matches by ``unmatched``, so the
label set stays bounded whatever clients ask for.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.routing import Mount

access_logger = logging.getLogger("seq2seq_jax.serving.access_log")
TEXTS_KEY = "seq2seq.texts"  # set in the ASGI scope by the routes that translate: how many texts they had


class ServeMetrics:
    """The server's metrics (names ``seq2seq_*``; counters end in ``_total`` in the text format)."""

    def __init__(self, row_buckets: Iterable[int]):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("seq2seq_requests", "HTTP requests answered, by route and status",
                                ["route", "status"], registry=r)
        self.texts = Counter("seq2seq_texts", "texts of the requests answered 200, by route", ["route"], registry=r)
        self.queue = Gauge("seq2seq_queue_texts", "texts waiting for a search", registry=r)
        self.rows = Histogram("seq2seq_search_rows", "rows of each compiled search run", registry=r,
                              buckets=sorted(set(row_buckets)))
        self.search_seconds = Histogram("seq2seq_search_seconds", "seconds each compiled search run took",
                                        registry=r, buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.compilations = Counter("seq2seq_compilations", "search programs compiled, the warm-up's included",
                                    registry=r)
        self.time_to_ready = Gauge("seq2seq_time_to_ready_seconds", "seconds from the decoder's start to ready "
                                   "(0 until then)", registry=r)

    def watch_queue(self, queued_texts: Callable[[], int]) -> None:
        self.queue.set_function(queued_texts)

    def search(self, rows: int, seconds: float) -> None:
        self.rows.observe(rows)
        self.search_seconds.observe(seconds)

    def text_format(self) -> bytes:
        return generate_latest(self.registry)


def route_label(app, path: str) -> str:
    """The template of the route ``path`` belongs to, or ``unmatched``."""
    for route in app.routes:
        if isinstance(route, Mount) and (path == route.path or path.startswith(route.path + "/")):
            return route.path
        if getattr(route, "path", None) == path:
            return path
    return "unmatched"


class AccessLog:
    """ASGI middleware, the outermost: counts each answer in ``metrics`` and, unless ``quiet``, logs it."""

    def __init__(self, app, metrics: ServeMetrics, routes_of, quiet: bool = False):
        self.app = app
        self.metrics = metrics
        self.routes_of = routes_of  # the FastAPI app, whose routes name the labels
        self.quiet = quiet

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 500

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            seconds = time.perf_counter() - started
            route = route_label(self.routes_of, scope["path"])
            texts = scope.get(TEXTS_KEY, 0)
            self.metrics.requests.labels(route, str(status)).inc()
            if status == 200 and texts:
                self.metrics.texts.labels(route).inc(texts)
            if not self.quiet:
                access_logger.info("%s %s %d texts=%d %.3fs id=%s", scope["method"], route, status, texts, seconds,
                                   scope.get("seq2seq.request_id", "-"))
