"""Who may call the server: with an API key (``--api-key``, ``--api-key-file`` or ``$SEQ2SEQ_JAX_API_KEY``)
every route but the health probes and the static pages (the web page, the OpenAPI pages and their scripts) needs
``Authorization: Bearer KEY``, else 401 (``ApiKey``); with ``--cors-origin`` those origins, and no other, may call
it from a browser (Starlette's ``CORSMiddleware``; ``add_access``). The key is never logged or answered."""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from seq2seq_jax.serving.middleware import error_response

logger = logging.getLogger(__name__)
KEY_VARIABLE = "SEQ2SEQ_JAX_API_KEY"
OPEN_PATHS = frozenset({"/", "/health", "/health/live", "/translator/health", "/docs", "/docs/oauth2-redirect",
                        "/redoc"})
OPEN_PREFIX = "/static-offline-docs/"  # fastapi-offline's scripts for /docs and /redoc


def resolve_api_key(key: str | None, key_file: str | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The key from ``--api-key``, else ``--api-key-file`` (its first line, stripped), else ``$SEQ2SEQ_JAX_API_KEY``;
    None: no key, the server is open. Both options at once, or an empty key, are refused (ValueError)."""
    if key is not None and key_file is not None:
        raise ValueError("give --api-key or --api-key-file, not both")
    if key_file is not None:
        lines = Path(key_file).read_text(encoding="utf-8").splitlines()
        key = lines[0].strip() if lines else ""
    elif key is None:
        key = environ.get(KEY_VARIABLE)
    if key is not None and not key.strip():
        raise ValueError(f"the API key is empty (--api-key, --api-key-file or ${KEY_VARIABLE})")
    return key


class ApiKey:
    """ASGI middleware: 401 for a request without ``Authorization: Bearer KEY`` outside ``OPEN_PATHS``."""

    def __init__(self, app, key: str):
        self.app = app
        self.expected = f"Bearer {key}".encode()

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if scope["type"] != "http" or path in OPEN_PATHS or path.startswith(OPEN_PREFIX):
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"authorization", b"")
        if hmac.compare_digest(given, self.expected):
            return await self.app(scope, receive, send)
        refused = error_response(401, "this server needs an API key: send Authorization: Bearer KEY", path=path,
                                 headers={"WWW-Authenticate": "Bearer"})
        return await refused(scope, receive, send)


def add_access(app: FastAPI, key: str | None, origins: Sequence[str]) -> None:
    """The API key check and the CORS policy (module docstring); call after the app's other middleware, so that
    both run before it (a CORS preflight is answered before the key is asked for)."""
    if key is not None:
        app.add_middleware(ApiKey, key=key)
        logger.info("an API key is required (Authorization: Bearer) on every route but the health probes and "
                    "the static pages")
    if origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
                           expose_headers=["X-Request-ID", "Retry-After"])
        logger.info("cross-origin requests allowed from %s", ", ".join(origins))
