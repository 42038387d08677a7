"""Run the HTTPS webhook and the metrics listener in one event loop, and stop without losing a
review.

On SIGTERM (what the kubelet sends):
1. at once: `/readyz` fails, and every response says `Connection: close`, so the API server's
   pooled connections are closed after an answer, never under a request it is sending;
2. for `--shutdown-delay`: everything else goes on, listeners included, while the endpoint
   is removed and the API server stops choosing this pod;
3. then the listeners close, idle connections close, and in-flight reviews finish and their
   responses drain to the client for up to `--shutdown-timeout`; the process exits 0.
SIGINT skips the delay; a second signal ends the drain at once.

Each listener is a stock `uvicorn.Server` serving its sockets (`serve(sockets=...)`), with
uvicorn's httptools protocol behind the guards of connection.py (`uvicorn.Config(http=...)`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
import ssl
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import uvicorn
from starlette.types import ASGIApp

from webhook.server import looplag
from webhook.server.connection import HTTPProtocol, Listening, connection_class
from webhook.server.listen import BACKLOG

log = logging.getLogger("webhook.server")

# The API server drops idle connections after 90 s; staying open longer avoids a reconnect
# (and a TLS handshake) racing a review.
KEEP_ALIVE_SECONDS = 120.0
_DRAIN_CHECK_SECONDS = 0.05


def freeze_startup_objects() -> None:
    """Move everything allocated so far (modules, apps, settings: all of it lives as long as
    the process) out of the cycle collector's sight. A full collection then walks only what
    came after, ~1 ms, instead of 30-55 ms during which the event loop, whichever thread
    triggered it, answers nothing (measured with bench/churn.py). Refcounting still frees
    frozen objects; only cyclic garbage among them would never be collected, and none is made
    at start."""
    gc.collect()
    gc.freeze()


@dataclass(frozen=True, slots=True)
class Timeouts:
    shutdown_delay: float = 5.0
    shutdown_timeout: float = 10.0
    tls_handshake: float = 5.0
    read_header: float = 5.0
    keep_alive: float = KEEP_ALIVE_SECONDS


@dataclass(slots=True)
class Listener:
    app: ASGIApp
    sockets: list[socket.socket]
    ssl_context: ssl.SSLContext | None = None


@dataclass(slots=True)
class Draining:
    """Set from the first SIGTERM on; readiness and `Connection: close` read it."""

    active: bool = False


class _Server(uvicorn.Server):
    """uvicorn's Server, except that signals are the ServerGroup's: `capture_signals` is the
    public hook `serve()` wraps itself in, and uvicorn's would stop at the first SIGTERM (no
    delay) and raise the signal again on the way out."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _uvicorn_config(app: ASGIApp, http: Any, keep_alive: float) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        http=http,
        ws="none",  # upgrade requests are answered as plain HTTP/1.1 (connection.py)
        lifespan="off",
        proxy_headers=False,
        access_log=False,
        log_config=None,
        log_level=logging.WARNING,  # not uvicorn's start and stop lines; its errors, yes
        server_header=False,
        date_header=False,
        timeout_keep_alive=int(keep_alive),
        backlog=BACKLOG,
    )


@dataclass(eq=False)
class _Served:
    """One listener: a uvicorn Server on its sockets, and its connections."""

    listener: Listener
    timeouts: Timeouts
    listening: Listening = field(init=False)
    server: _Server = field(init=False)
    task: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        stock = _uvicorn_config(self.listener.app, "httptools", self.timeouts.keep_alive)
        stock.load()
        self.listening = Listening(
            # uvicorn's own protocol class, as `load()` resolved the `http` setting
            http=cast(Callable[..., HTTPProtocol], stock.http_protocol_class),
            read_header_timeout=self.timeouts.read_header,
            tls=self.listener.ssl_context,
            tls_handshake_timeout=self.timeouts.tls_handshake,
        )
        http = connection_class(self.listening)
        self.server = _Server(_uvicorn_config(self.listener.app, http, self.timeouts.keep_alive))

    def start(self) -> None:
        self.task = asyncio.create_task(self.server.serve(sockets=self.listener.sockets))

    def close_listeners(self) -> None:
        """New connections are refused from now on; accepted ones carry on."""
        for server in self.server.servers:  # the asyncio servers uvicorn's startup() made
            server.close()

    def settle(self) -> bool:
        """One drain step: close what has nothing left to do; True once nothing is left."""
        for connection in list(self.listening.connections):
            if connection.busy:
                connection.quiet_checks = 0
                continue
            transport = connection.transport
            if transport is None or not transport.is_closing():
                connection.close_gracefully()
                connection.quiet_checks = 0
                continue
            if connection.unsent_bytes():
                connection.quiet_checks = 0
                continue
            # Everything reached the client; do not wait for its close_notify. Twice, so a
            # write the loop had not yet handed to the kernel is not mistaken for none.
            connection.quiet_checks += 1
            if connection.quiet_checks >= 2:
                transport.abort()
        return not self.listening.connections

    def abort_all(self) -> int:
        left = len(self.listening.connections)
        for connection in list(self.listening.connections):
            connection.abort()
        return left

    def expire_heads(self, now: float) -> None:
        for connection in list(self.listening.connections):
            if connection.head_overdue(now):
                log.debug("closing a connection that sent no complete request head in time")
                connection.head_since = None
                connection.abort()

    async def stop(self) -> None:
        """Let uvicorn's serve() return: the drain is done, nothing is left to wait for."""
        self.server.force_exit = True
        self.server.should_exit = True
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)


@dataclass(eq=False)
class ServerGroup:
    listeners: Sequence[Listener]
    background: Sequence[Callable[[], Coroutine[Any, Any, None]]] = ()
    timeouts: Timeouts = field(default_factory=Timeouts)
    draining: Draining = field(default_factory=Draining)
    # Given an observer, the event-loop lag monitor runs for as long as the servers do.
    loop_lag: looplag.Observe | None = None
    started: bool = False
    _served: list[_Served] = field(default_factory=list)
    _stop: asyncio.Event | None = None
    _skip_delay: asyncio.Event | None = None
    _force: asyncio.Event | None = None

    def stop(self, *, delay: bool = True) -> None:
        """Begin the drain (thread-unsafe: call on the loop). A second call ends it at once."""
        assert self._stop is not None and self._skip_delay is not None and self._force is not None
        if self._stop.is_set():
            self._force.set()
        self._stop.set()
        if not delay:
            self._skip_delay.set()

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        self._stop, self._skip_delay, self._force = (asyncio.Event() for _ in range(3))
        self._served = [_Served(listener, self.timeouts) for listener in self.listeners]
        for served in self._served:
            served.start()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGTERM, self._on_signal, signal.SIGTERM)
            loop.add_signal_handler(signal.SIGINT, self._on_signal, signal.SIGINT)
        jobs = [asyncio.create_task(job()) for job in self.background]
        if self.loop_lag is not None:
            jobs.append(asyncio.create_task(looplag.monitor(self.loop_lag)))
        sweeper = asyncio.create_task(self._expire_heads())
        try:
            while not all(served.server.started for served in self._served):
                if any(served.task is not None and served.task.done() for served in self._served):
                    raise RuntimeError("a listener failed to start")
                await asyncio.sleep(0.005)
            self.started = True
            await self._stop.wait()
            await self._drain()
        finally:
            sweeper.cancel()
            for task in jobs:
                task.cancel()
            await asyncio.gather(sweeper, *jobs, return_exceptions=True)
            await asyncio.gather(*(served.stop() for served in self._served))

    def _on_signal(self, sig: signal.Signals) -> None:
        assert self._stop is not None
        if self._stop.is_set():
            log.info("received %s again, closing every connection now", sig.name)
        elif sig == signal.SIGINT or self.timeouts.shutdown_delay <= 0:
            log.info("received %s, draining: /readyz fails, listeners close now", sig.name)
        else:
            log.info(
                "received %s, draining: /readyz fails and answers say Connection: close; "
                "listeners close in %gs (--shutdown-delay)",
                sig.name,
                self.timeouts.shutdown_delay,
            )
        self.stop(delay=sig != signal.SIGINT)

    async def _wait_any(self, timeout: float, *events: asyncio.Event) -> None:
        waits = [asyncio.ensure_future(event.wait()) for event in events]
        try:
            await asyncio.wait(
                waits, timeout=max(0.0, timeout), return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for wait in waits:
                wait.cancel()

    async def _drain(self) -> None:
        assert self._skip_delay is not None and self._force is not None
        self.draining.active = True
        await self._wait_any(self.timeouts.shutdown_delay, self._skip_delay, self._force)
        for served in self._served:
            served.close_listeners()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeouts.shutdown_timeout
        while not self._force.is_set():
            settled = [served.settle() for served in self._served]
            if all(settled) or loop.time() >= deadline:
                break
            await self._wait_any(_DRAIN_CHECK_SECONDS, self._force)
        left = sum(served.abort_all() for served in self._served)
        if left:
            log.warning(
                "%d connection(s) still busy or sending when the drain ended (--shutdown-timeout)",
                left,
            )

    async def _expire_heads(self) -> None:
        loop = asyncio.get_running_loop()
        interval = min(1.0, max(0.05, self.timeouts.read_header / 4))
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            for served in self._served:
                served.expire_heads(now)


def run(group: ServerGroup) -> None:
    """Run on uvloop when installed (a runtime dependency, locked; not on every platform)."""
    freeze_startup_objects()
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(group.serve())
        return
    uvloop.run(group.serve())
