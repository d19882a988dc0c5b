"""The FastAPI application of ``seq2seq serve`` (the routes' docstrings give each body):

    POST /v1/translate          {"texts", "prefixes"?, decode settings?, "attention"?, "tgt_lang"?} -> {"translations"}
    POST /v1/score              {"pairs": [{"src", "tgt"}], "tgt_lang"?} -> {"scores", "summary"}, as ``seq2seq score``
    POST /translator/translate  OpenNMT-py's onmt_server format, ids echoed; GET /translator/health and
                                 /translator/models; errors there {"error", "status": "error"}
    GET  /health                readiness (503 until the first search is compiled), compiled and warming shapes;
                                 /health/live: liveness, 200 while the process serves
    GET  /metrics               Prometheus metrics (seq2seq_jax.serving.metrics)
    GET  /v1/info               model, decode config, each model's workdir name (no path), checkpoint, step, metrics,
                                 the target languages of a multilingual model (``tgt_lang``: one is needed of several)
    GET  /                      the web page; /docs and /redoc: FastAPI's OpenAPI pages, served offline

The models are one workdir's or an ensemble's (``Seq2SeqModel``); the first gives the tokenizers, the decode
defaults and the attention. The event loop only awaits the decoder's futures: ``/health`` answers while it decodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import json
import math
import pathlib
import threading
import time
from collections.abc import Sequence
from typing import Annotated, Any

import numpy as np
from fastapi import Body, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST

from seq2seq_jax.core.config import DecodeConfig
from seq2seq_jax.core.pair_scores import PairScore, corpus_summary, format_score
from seq2seq_jax.decoding.loaded_model import Seq2SeqModel
from seq2seq_jax.decoding.translate import Hypothesis
from seq2seq_jax.serving.access import add_access
from seq2seq_jax.serving.decoder import BatchingDecoder, QueueFull
from seq2seq_jax.serving.metrics import TEXTS_KEY, AccessLog
from seq2seq_jax.serving.middleware import BodySizeLimit, RequestIds, add_error_handlers
from seq2seq_jax.serving.page import index
from seq2seq_jax.serving.programs import ServerStatus
from seq2seq_jax.serving.schema import ONMT_ID, OnmtItem, RequestChecks, ScoreRequest, ServeLimits, TranslateRequest


def hypothesis_json(model: Seq2SeqModel, source: str, hypothesis: Hypothesis,
                    tgt_lang: str | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {"text": hypothesis.text, "score": hypothesis.score}
    if hypothesis.attention is not None:
        src_tokenizer = model.source_tokenizer(tgt_lang)  # the tag is one of the source pieces
        weights = hypothesis.attention
        target = model.tgt_tokenizer.pieces(hypothesis.tokens)
        target += ["</s>"] * (weights.shape[0] - len(target))  # the EOS step, when the hypothesis has one
        answer["attention"] = {"source": src_tokenizer.pieces(src_tokenizer.encode(source)) + ["</s>"],
                               "target": target, "weights": np.round(weights.astype(np.float64), 5).tolist()}
    return answer


async def client_gone(http: Request) -> None:
    """Returns once the client has closed the connection (the body is read: what comes next is the disconnect)."""
    while (await http.receive())["type"] != "http.disconnect":
        pass


class Routes:
    """The endpoints (module docstring), bound to one model, its decoder and the request checks."""

    def __init__(self, model: Seq2SeqModel, decoder: BatchingDecoder, checks: RequestChecks,
                 checkpoint: str | int = "best"):
        self.model = model
        self.checkpoint = checkpoint
        self.scoring = threading.Lock()  # one forced-decoding call at a time
        self.shutdown_expired = asyncio.Event()  # set --shutdown-timeout seconds after SIGTERM
        self.decoder = decoder
        self.checks = checks

    async def _decode(self, http: Request, texts: list[str], config: DecodeConfig, attention: bool,
                      prefixes: list[str] | None = None, tgt_lang: str | None = None) -> list[list[Hypothesis]]:
        """The texts' hypotheses, or 429 (queue full), 503 (past ``request_timeout``, or shutting down); a request
        whose client went away, or timed out, before its search began leaves the queue undecoded."""
        try:
            future = self.decoder.submit(texts, config, attention, prefixes, tgt_lang)
        except QueueFull as error:
            raise HTTPException(429, str(error), headers={"Retry-After": str(error.retry_after)}) from None
        except RuntimeError as error:
            raise HTTPException(503, str(error)) from None
        answer = asyncio.wrap_future(future)
        gone = asyncio.ensure_future(client_gone(http))
        late = asyncio.ensure_future(self.shutdown_expired.wait())
        timeout = self.decoder.limits.request_timeout or None
        try:
            await asyncio.wait({answer, gone, late}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            late.cancel()
        if answer.done():
            return answer.result()
        began = not self.decoder.withdraw(future)
        if gone.done() and not gone.cancelled():
            raise HTTPException(499, "the client closed the connection")  # nobody reads it
        if self.shutdown_expired.is_set():
            raise HTTPException(503, f"the server is shutting down and its --shutdown-timeout "
                                     f"({self.decoder.limits.shutdown_timeout:g} s) is over")
        raise HTTPException(503, f"timed out: no answer within {timeout:g} s (seq2seq serve --request-timeout); "
                                 f"{'its search had begun' if began else 'it was not decoded'}")

    async def translate_v1(self, request: TranslateRequest, http: Request) -> dict[str, Any]:
        """Per text, in order, its hypotheses best first: text, score and, when asked, the attention weights
        ``[target pieces (+ </s>), source pieces + </s>]`` with the pieces they refer to. ``prefixes``: one target
        prefix per text (``""`` for none) that each of its hypotheses starts with (included in text and score)."""
        settings = request.model_dump(exclude={"texts", "prefixes", "attention", "tgt_lang"}, exclude_none=True)
        tgt_lang = self.checks.language(request.tgt_lang)
        config = self.checks.config(request.texts, **settings)
        if request.prefixes is not None:
            self.checks.prefixes(request.texts, request.prefixes)
        http.scope[TEXTS_KEY] = len(request.texts)
        results = await self._decode(http, request.texts, config, request.attention, request.prefixes, tgt_lang)
        return {"translations": [[hypothesis_json(self.model, text, h, tgt_lang) for h in hypotheses]
                                 for text, hypotheses in zip(request.texts, results, strict=True)]}

    async def translate_onmt(self, items: Annotated[list[OnmtItem], Body(min_length=1)],
                             http: Request) -> list[list[dict[str, Any]]]:
        """OpenNMT-py's ``onmt_server`` answer: one list per n-best rank, each with one entry per input (its ``id``
        echoed). A blank source is not translated: its ``tgt`` is empty and its ``pred_score`` 0 (the
        log-probability of nothing)."""
        texts = [item.src for item in items]
        tgt_lang = self.checks.language(None)  # the only language of a model with one; 422 for several
        config = self.checks.config(texts)
        http.scope[TEXTS_KEY] = len(texts)
        results = await self._decode(http, texts, config, False, tgt_lang=tgt_lang)

        def entry(item: OnmtItem, hypotheses: list[Hypothesis], rank: int) -> dict[str, Any]:
            hypothesis = hypotheses[rank] if hypotheses else Hypothesis("", [], 0.0)
            return {"src": item.src, "tgt": hypothesis.text, "n_best": config.n_best, "pred_score": hypothesis.score,
                    "id": item.id}

        return [[entry(item, hypotheses, rank) for item, hypotheses in zip(items, results, strict=True)]
                for rank in range(config.n_best)]

    async def score(self, request: ScoreRequest, http: Request) -> dict[str, Any]:
        """Forced decoding, as ``seq2seq score --json``: per pair, in order, ``log_prob`` (the target pieces' and
        EOS's summed log-probability), ``mean`` and ``count`` (pieces + 1); ``summary``: pairs, pieces, total
        log-probability and perplexity (null when not finite). One scoring at a time, beside the decoding
        thread; past ``request_timeout`` 503 (the scoring still finishes)."""
        self.checks.pairs(request.pairs)
        tgt_lang = self.checks.language(request.tgt_lang)
        http.scope[TEXTS_KEY] = len(request.pairs)
        sources, targets = [p.src for p in request.pairs], [p.tgt for p in request.pairs]

        def score_pairs() -> list[PairScore]:
            with self.scoring:
                return self.model.score(sources, targets, tgt_lang)

        timeout = self.decoder.limits.request_timeout or None
        try:
            scores = await asyncio.wait_for(asyncio.to_thread(score_pairs), timeout)
        except TimeoutError:
            raise HTTPException(503, f"timed out: no scores within {timeout:g} s (seq2seq serve "
                                     "--request-timeout)") from None
        summary = {k: v if math.isfinite(v) else None for k, v in corpus_summary(scores).items()}
        return {"scores": [json.loads(format_score(score, as_json=True)) for score in scores], "summary": summary}

    async def onmt_health(self) -> JSONResponse:
        """OpenNMT-py's ``/translator/health``: ``{"status": "ok"}`` once ready (503 and the status before)."""
        ready = self.decoder.status is ServerStatus.READY
        return JSONResponse({"status": "ok" if ready else self.decoder.status.value}, status_code=200 if ready else 503)

    async def onmt_models(self) -> list[dict[str, Any]]:
        """OpenNMT-py's ``/translator/models``: the one model served (an ensemble is one), under OpenNMT's model
        id, with its workdirs' names, the checkpoint and the decode defaults as its ``opt``."""
        config = self.decoder.default_config
        return [{"model_id": ONMT_ID, "models": [pathlib.PurePath(name).name for name in self.model.names],
                 "loaded": True, "timeout": -1,
                 "opt": {"checkpoint": self.checkpoint, "steps": [m.step for m in self.model.models],
                         "beam_size": config.beam_size, "n_best": config.n_best}}]

    async def metrics(self) -> Response:
        """The Prometheus metrics (``seq2seq_jax.serving.metrics``), in its text format."""
        return Response(self.decoder.metrics.text_format(), media_type=CONTENT_TYPE_LATEST)

    async def live(self) -> dict[str, str]:
        """Liveness: 200 whenever the process answers, warming up or not (``/health`` says whether it is ready)."""
        return {"status": "live"}

    async def health(self) -> JSONResponse:
        """``ready`` (200) once the likeliest shape is compiled, before that ``warming up`` (503; requests are
        queued meanwhile and answered after it); the loaded step (the first model's; ``steps``: every model's),
        the compiled search shapes and, in ``warming``, those the warm-up (``warm_up``: ``first``,
        ``background``, ``done`` or ``failed``) has still to compile."""
        decoder = self.decoder
        status = decoder.status
        shapes = decoder.shapes()
        text = f"{status.value}: {decoder.warm_up_error}" if status is ServerStatus.FAILED else status.value
        body = {"status": text, "step": self.model.models[0].step, "steps": [m.step for m in self.model.models],
                "compiled_programs": len(shapes["compiled"]), "compiled": shapes["compiled"],
                "warm_up": decoder.warm_up_state.value, "warming": shapes["warming"],
                "row_buckets": list(decoder.rows), "gc_frozen_objects": gc.get_freeze_count(), **decoder.counts()}
        return JSONResponse(body, status_code=200 if status is ServerStatus.READY else 503)

    async def info(self) -> dict[str, Any]:
        """The model and default decode configuration, the checkpoint's step and validation metrics, the limits;
        ``models``: those of every model of an ensemble (``model``, ``step`` and ``metrics``: the first's), each
        named by its workdir's last path component and the checkpoint asked for (no file-system path)."""
        decoder, model = self.decoder, self.model
        decode = {k: v for k, v in decoder.default_config.to_dict().items()
                  if k not in ("sample", "temperature", "top_k", "top_p", "seed", "batch_size")}
        models = [{"workdir": pathlib.PurePath(name).name, "checkpoint": self.checkpoint,
                   "model": m.config.model.to_dict(), "step": m.step,
                   "metrics": {k: v for k, v in m.metrics.items() if math.isfinite(v)}}
                  for name, m in zip(model.names, model.models, strict=True)]
        return {**{k: models[0][k] for k in ("workdir", "checkpoint", "model", "step", "metrics")}, "decode": decode,
                "ensemble": model.is_ensemble, "models": models, "tokenizer": model.models[0].config.data.tokenizer,
                "languages": model.languages.names,
                "bucket_width": decoder.bucket_width, "row_buckets": list(decoder.rows),
                "limits": dataclasses.asdict(decoder.limits)}


def create_app(model: Seq2SeqModel, limits: ServeLimits, checkpoint: str | int = "best", api_key: str | None = None,
               cors_origins: Sequence[str] = (), quiet: bool = False) -> FastAPI:
    """The FastAPI application serving ``model`` (its decoding thread starts and stops with the app);
    ``checkpoint``: the one loaded (best, latest or a step), as ``/v1/info`` names it; ``api_key`` and
    ``cors_origins``: ``seq2seq_jax.serving.access``; ``quiet``: no access log."""
    decoder = BatchingDecoder(model, limits)
    checks = RequestChecks(limits, decoder.default_config, model.new_translator(decoder.default_config),
                           model.languages)
    routes = Routes(model, decoder, checks, checkpoint)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        decoder.start()
        yield
        grace = None  # the rest of --shutdown-timeout (0: none), from when shutdown_started() was called
        if limits.shutdown_timeout and app.state.shutdown_started is not None:
            grace = max(0.0, limits.shutdown_timeout - (time.monotonic() - app.state.shutdown_started))
        await asyncio.to_thread(decoder.stop, grace)

    def shutdown_started() -> None:
        """Called on the event loop as the server stops accepting: in-flight requests get 503 once
        ``shutdown_timeout`` is over."""
        app.state.shutdown_started = time.monotonic()
        if limits.shutdown_timeout:
            asyncio.get_running_loop().call_later(limits.shutdown_timeout, routes.shutdown_expired.set)

    app = FastAPIOffline(title="seq2seq-jax translation server", version="1", lifespan=lifespan,
                         description="Translate with a seq2seq-jax workdir. Concurrent requests are merged into "
                                     "one compiled search; every answer equals the one its text gets alone.")
    app.add_middleware(BodySizeLimit, max_bytes=limits.max_body_bytes)
    app.add_middleware(RequestIds)  # outside BodySizeLimit: every answer has an id
    add_access(app, api_key, cors_origins)  # the key before anything, CORS before the key
    app.add_middleware(AccessLog, metrics=decoder.metrics, routes_of=app, quiet=quiet)  # sees every answer
    add_error_handlers(app)
    app.state.decoder = decoder
    app.state.shutdown_started = None
    app.state.on_shutdown = shutdown_started
    app.add_api_route("/v1/translate", routes.translate_v1, methods=["POST"])
    app.add_api_route("/v1/score", routes.score, methods=["POST"])
    app.add_api_route("/translator/translate", routes.translate_onmt, methods=["POST"])
    app.add_api_route("/translator/health", routes.onmt_health, methods=["GET"])
    app.add_api_route("/translator/models", routes.onmt_models, methods=["GET"])
    app.add_api_route("/health", routes.health, methods=["GET"])
    app.add_api_route("/health/live", routes.live, methods=["GET"])
    app.add_api_route("/metrics", routes.metrics, methods=["GET"], include_in_schema=False)
    app.add_api_route("/v1/info", routes.info, methods=["GET"])
    app.add_api_route("/", index, methods=["GET"], response_class=HTMLResponse, include_in_schema=False)
    return app
