"""The web page ``GET /`` serves: one HTML file shipped in the package (``static/index.html``: a text box, the
n-best list and the attention heatmap of the chosen hypothesis), its scripts inline, nothing from a CDN."""

from __future__ import annotations

import functools
import importlib.resources

from fastapi.responses import HTMLResponse


@functools.cache
def page_html() -> str:
    return importlib.resources.files("seq2seq_jax.serving").joinpath("static", "index.html").read_text(
        encoding="utf-8")


async def index() -> HTMLResponse:
    return HTMLResponse(page_html())
