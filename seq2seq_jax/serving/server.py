"""``seq2seq serve``'s process: the app (``seq2seq_jax.serving.app``) on uvicorn, bound to ``host`` (127.0.0.1
unless told otherwise). SIGTERM or SIGINT: stop accepting, answer every accepted request, those still unanswered
after ``--shutdown-timeout`` seconds with 503, exit 0."""

from __future__ import annotations

import logging
import signal
from collections.abc import Sequence

from seq2seq_jax.decoding.loaded_model import Seq2SeqModel
from seq2seq_jax.serving.app import create_app
from seq2seq_jax.serving.schema import ServeLimits

logger = logging.getLogger(__name__)


def serve(model: Seq2SeqModel, host: str, port: int, limits: ServeLimits, checkpoint: str | int = "best",
          api_key: str | None = None, cors_origins: Sequence[str] = (), quiet: bool = False) -> int:
    """Warm ``model`` up in the background and serve it until SIGTERM/SIGINT; returns 0 after a graceful
    shutdown. ``api_key``, ``cors_origins``: ``seq2seq_jax.serving.access``; ``quiet``: no access log."""
    import uvicorn

    for name, trained in zip(model.names, model.models, strict=True):
        logger.info("loaded step %d of %s", trained.step, name)
    if model.is_ensemble:
        logger.info("serving an ensemble of %d models", len(model.models))
    app = create_app(model, limits, checkpoint, api_key, cors_origins, quiet)

    class GracefulServer(uvicorn.Server):
        """uvicorn's server, telling the app when it stops accepting (the --shutdown-timeout clock starts)."""

        async def shutdown(self, sockets=None):
            app.state.on_shutdown()
            await super().shutdown(sockets)

    # uvicorn's own limit is a second past the app's, which answers what is still in flight with 503 first.
    graceful = limits.shutdown_timeout + 1 if limits.shutdown_timeout else None
    server = GracefulServer(uvicorn.Config(app, host=host, port=port, log_level="info", access_log=False,
                                           timeout_graceful_shutdown=graceful))
    # uvicorn re-raises the signal it shut down on once it is done; these handlers absorb it, so the process
    # exits 0 after a graceful shutdown rather than being killed by the default handler.
    for handled in (signal.SIGTERM, signal.SIGINT):
        signal.signal(handled, lambda *_: None)
    server.run()
    return 0 if server.started else 1
