"""Accepting connections: bounded TLS handshakes and Go's answer to plain HTTP on the TLS port.

Connections are accepted here rather than by the event loop's server so that, before any TLS,
the first bytes can be peeked: a client speaking plain HTTP to the HTTPS port gets Go's
`400 Client sent an HTTP request to an HTTPS server.`, and a client that sends nothing, or
never finishes its handshake, is closed after `--tls-handshake-timeout` (Go bounds the
handshake by its ReadHeaderTimeout; a connection that never talks would otherwise hold a file
descriptor forever).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("webhook.server")

# Go's net/http: tlsRecordHeaderLooksLikeHTTP and the answer it writes.
_HTTP_STARTS = (b"GET /", b"HEAD ", b"POST ", b"PUT /", b"OPTIO")
PLAIN_HTTP_ANSWER = (
    b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
)
_PEEK_POLL_SECONDS = 0.01
_MAX_ACCEPTS_PER_WAKEUP = 256

ProtocolFactory = Callable[[], asyncio.Protocol]


def looks_like_http(first: bytes) -> bool:
    return first[:5] in _HTTP_STARTS


def _undecided(first: bytes) -> bool:
    """Fewer than 5 bytes that could still turn into one of Go's HTTP starts."""
    return len(first) < 5 and any(start.startswith(first) for start in _HTTP_STARTS)


@dataclass(eq=False)
class Acceptor:
    """Accepts on `sockets` and hands each connection to `factory`'s protocol (over TLS when
    `ssl_context` is set) until `close()`."""

    sockets: list[socket.socket]
    factory: ProtocolFactory
    ssl_context: ssl.SSLContext | None
    handshake_timeout: float
    opening: set[asyncio.Task[None]] = field(default_factory=set)
    _loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for sock in self.sockets:
            self._loop.add_reader(sock.fileno(), self._accept_ready, sock)

    def close(self) -> None:
        """Take what already waits in the kernel's accept queues, then stop listening: a
        connection the kernel completed must be served, not reset."""
        for sock in self.sockets:
            if self._loop is not None:
                self._loop.remove_reader(sock.fileno())
            self._accept_all(sock, limit=None)
            sock.close()

    def _accept_ready(self, sock: socket.socket) -> None:
        self._accept_all(sock, limit=_MAX_ACCEPTS_PER_WAKEUP)

    def _accept_all(self, sock: socket.socket, limit: int | None) -> None:
        accepted = 0
        while limit is None or accepted < limit:
            try:
                conn, peer = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:  # EMFILE, ECONNABORTED...: keep listening
                log.warning("accept failed: %s", err)
                return
            accepted += 1
            conn.setblocking(False)
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = asyncio.ensure_future(self._open(conn, peer))
            self.opening.add(task)
            task.add_done_callback(self.opening.discard)

    async def _open(self, conn: socket.socket, peer: object) -> None:
        loop = asyncio.get_running_loop()
        handed_over = False  # from then on the transport owns (and closes) the socket
        try:
            if self.ssl_context is None:
                handed_over = True
                await loop.connect_accepted_socket(self.factory, conn)
                return
            # 0 or less: no limit of ours (the TLS layer's own 60 s still bounds the handshake).
            limited = self.handshake_timeout > 0
            deadline = loop.time() + self.handshake_timeout if limited else float("inf")
            first = await _peek(loop, conn, deadline)
            if looks_like_http(first):
                _answer_plain_http(conn)
                return
            if not first:
                return
            handed_over = True
            await loop.connect_accepted_socket(
                self.factory,
                conn,
                ssl=self.ssl_context,
                ssl_handshake_timeout=max(0.001, deadline - loop.time()) if limited else None,
            )
        except TimeoutError:
            log.debug("TLS handshake from %s not completed in time; closed", peer)
        except (OSError, ssl.SSLError, EOFError) as err:
            log.debug("TLS handshake error from %s: %s", peer, err)
        finally:
            if not handed_over:
                conn.close()


def _answer_plain_http(conn: socket.socket) -> None:
    """Go's answer, then FIN; the request is read away first so that closing does not reset
    the connection and discard the answer before the client reads it."""
    with contextlib.suppress(OSError):
        conn.send(PLAIN_HTTP_ANSWER)
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(65536):
            pass


async def _peek(loop: asyncio.AbstractEventLoop, conn: socket.socket, deadline: float) -> bytes:
    """The first bytes the client sent, without consuming them; b"" on EOF."""
    while True:
        try:
            first = conn.recv(5, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            first = None
        except ConnectionError:
            return b""
        if first is not None and not _undecided(first):
            return first
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise TimeoutError
        if first is None:
            await _readable(loop, conn, remaining)
        else:
            await asyncio.sleep(min(_PEEK_POLL_SECONDS, remaining))


async def _readable(loop: asyncio.AbstractEventLoop, conn: socket.socket, timeout: float) -> None:
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    def expire() -> None:
        if not ready.done():
            ready.set_exception(TimeoutError())

    fd = conn.fileno()
    loop.add_reader(fd, wake)
    timer = loop.call_later(timeout, expire) if timeout != float("inf") else None
    try:
        await ready
    finally:
        if timer is not None:
            timer.cancel()
        loop.remove_reader(fd)
