"""Run the HTTPS webhook and the metrics listener in one event loop, and stop them cleanly.

SIGTERM (what the kubelet sends) stops accepting, closes idle keep-alive connections at once
(the API server pools them), lets in-flight reviews finish for up to the drain timeout, and
returns so the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import ssl
from collections.abc import Callable, Coroutine, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.types import ASGIApp

log = logging.getLogger("webhook.server")

# The API server drops idle connections after 90 s; staying open longer avoids a reconnect
# (and a TLS handshake) racing a review.
KEEP_ALIVE_SECONDS = 120
DRAIN_SECONDS = 10


class _QuietServer(uvicorn.Server):
    """uvicorn.Server without its own signal handling: we stop both listeners together and
    must not have uvicorn re-raise SIGTERM after a clean shutdown."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn closes idle connections gracefully, and a TLS close waits for the peer's
        # close_notify, which a pooling client (the API server) may never send: the drain
        # would then always last its full timeout. Idle connections carry no request, so
        # abort them, as Go's http.Server.Shutdown does.
        for connection in list(self.server_state.connections):
            cycle = getattr(connection, "cycle", None)
            transport = getattr(connection, "transport", None)
            if transport is not None and (cycle is None or cycle.response_complete):
                transport.abort()
        await super().shutdown(sockets)


@dataclass(slots=True)
class Listener:
    app: ASGIApp
    host: str
    port: int
    ssl_context: ssl.SSLContext | None = None


@dataclass(slots=True)
class ServerGroup:
    listeners: Sequence[Listener]
    background: Sequence[Callable[[], Coroutine[Any, Any, None]]] = ()
    drain_seconds: float = DRAIN_SECONDS
    servers: list[uvicorn.Server] = field(default_factory=list)

    def _server(self, listener: Listener) -> uvicorn.Server:
        context = listener.ssl_context
        config = uvicorn.Config(
            listener.app,
            host=listener.host,
            port=listener.port,
            loop="none",  # the loop is ours (uvloop when available)
            http="httptools",
            lifespan="off",
            access_log=False,
            log_config=None,
            server_header=False,
            date_header=False,
            timeout_keep_alive=KEEP_ALIVE_SECONDS,
            timeout_graceful_shutdown=int(self.drain_seconds),
            ssl_context_factory=(lambda _config, _default: context) if context else None,
        )
        return _QuietServer(config)

    def stop(self) -> None:
        for server in self.servers:
            server.should_exit = True

    @property
    def started(self) -> bool:
        return bool(self.servers) and all(s.started for s in self.servers)

    async def serve(self) -> None:
        self.servers = [self._server(listener) for listener in self.listeners]
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_signal, sig)
        tasks = [asyncio.create_task(job()) for job in self.background]
        try:
            await asyncio.gather(*(server.serve() for server in self.servers))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("received %s, draining in-flight requests", sig.name)
        self.stop()


def run(group: ServerGroup) -> None:
    """Run on uvloop when installed (it is part of uvicorn[standard])."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(group.serve())
        return
    uvloop.run(group.serve())
