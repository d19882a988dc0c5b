"""How the server refuses: a body over ``max_body_bytes`` gets 413 before any handler (``BodySizeLimit``), a
POST not sent as JSON 415 (a guard against cross-site requests to a loopback server), malformed JSON 400, a body
the schema refuses 422, a full queue 429 (with ``Retry-After``), an unexpected error 500 with the request's id and
a generic message (``RequestIds``; the traceback goes to the log); every refusal is a JSON ``{"error": "..."}``
that names the field, with OpenNMT-py's ``"status": "error"`` on its /translator/ routes (``add_error_handlers``).
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

logger = logging.getLogger(__name__)
REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")  # a client's own X-Request-ID, kept when it looks like this


def error_response(status: int, message: str, headers: dict[str, str] | None = None, path: str = "",
                   **extra: Any) -> JSONResponse:
    """``{"error": message, **extra}``; on OpenNMT-py's routes (``path`` under /translator/) with its
    ``"status": "error"``."""
    onmt = {"status": "error"} if path.startswith("/translator/") else {}
    return JSONResponse({"error": message, **onmt, **extra}, status_code=status, headers=headers)


class BodySizeLimit:
    """ASGI middleware: a request body over ``max_bytes`` (declared or streamed) gets 413 before any handler."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = error_response(413, f"request body over the {self.max_bytes}-byte limit of this server "
                                        "(seq2seq serve --max-body-bytes)", path=scope["path"])
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


class RequestIds:
    """ASGI middleware: every HTTP request gets an id (the client's ``X-Request-ID`` if it is one, else a new one),
    sent back as ``X-Request-ID``; an unexpected error gets 500 with the id and a generic message, and its
    traceback goes to the log under that id, never to the client."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex[:16]
        scope["seq2seq.request_id"] = request_id
        started = False

        async def send_with_id(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"x-request-id", request_id.encode("latin-1"))]}
            await send(message)

        try:
            return await self.app(scope, receive, send_with_id)
        except Exception:
            logger.exception("request %s (%s %s) failed", request_id, scope["method"], scope["path"])
            if started:
                raise
            failed = error_response(500, f"internal error (request id {request_id}): the server could not answer "
                                         "this request; its log has the details", path=scope["path"],
                                    request_id=request_id)
            return await failed(scope, receive, send_with_id)


async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
    content_type = request.headers.get("content-type", "")
    if request.method == "POST" and "json" not in content_type:
        return error_response(415, path=request.url.path,
                              message="the request body must be JSON sent with Content-Type: application/json "
                                      f"(got {content_type or 'no Content-Type'})")
    problems = jsonable_encoder(error.errors())
    if any(problem.get("type") == "json_invalid" for problem in problems):
        return error_response(400, "malformed JSON: " + "; ".join(p.get("ctx", {}).get("error", p["msg"])
                                                                   for p in problems),
                              path=request.url.path, detail=problems)
    message = "; ".join(f"{'.'.join(str(part) for part in p['loc'][1:]) or 'body'}: {p['msg']}" for p in problems)
    return error_response(422, message, path=request.url.path, detail=problems)


async def http_error(request: Request, error: HTTPException) -> JSONResponse:
    return error_response(error.status_code, str(error.detail), headers=error.headers, path=request.url.path)


def add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(HTTPException, http_error)
