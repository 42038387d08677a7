"""One connection: uvicorn's own HTTP/1.1 protocol, with the webhook's guards in front of it.

uvicorn takes the class of its HTTP protocol from the `http=` setting of `uvicorn.Config`. The
class given there (`connection_class`) creates uvicorn's stock httptools protocol with whatever
arguments uvicorn passes, forwards every asyncio.Protocol callback to it, and adds, with public
asyncio, ssl and httptools APIs only:

- TLS with a deadline: uvicorn listens on plain TCP; the first bytes of each connection are
  read and kept until they tell TLS from plain HTTP, then handed to the TLS layer. Plain HTTP
  gets Go's `400 Client sent an HTTP request to an HTTPS server.`; a client that sends
  nothing, or never finishes its handshake, is closed after --tls-handshake-timeout
  (`loop.start_tls(..., ssl_handshake_timeout=)`). The SSLContext is the one the certificate
  reloader loads new pairs into (tls.py), so new handshakes see a new certificate.
- Request heads: a second httptools parser with three callbacks (no header copies) follows
  the request boundaries. A head has --read-header-timeout (Go's ReadHeaderTimeout) from its
  first byte, or from the connection's start for the first request, while the server is
  reading; idle keep-alive connections keep uvicorn's keep-alive timeout. A head larger than
  Go's 1 MiB limit is answered Go's 431 and the connection closed, before uvicorn buffers it.
- `Upgrade:` is ignored as Go's server ignores it: the header is renamed before any parser sees
  it, so `Upgrade: h2c` on a review is answered over HTTP/1.1 with its body (llhttp would stop
  at the upgrade and skip the body).
- Answers leave in one write: uvicorn writes an answer's head and its body separately; the
  transport it is given (`CoalescingTransport`) joins what is written in one turn of the
  event loop, so over TLS each answer is one record and one send, not two (~30 µs of CPU per
  review at 1,000 req/s, bench/README.md).
- Draining (runner.py): `busy` and `unsent_bytes()` tell when a connection may be closed, and
  uvicorn's public `shutdown()` closes it now if idle, else after the answer in progress.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import re
import ssl
import struct
import termios
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, cast

import httptools

log = logging.getLogger("webhook.server")

MAX_HEADER_BYTES = 1 << 20  # Go's http.DefaultMaxHeaderBytes
HEADER_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"
    b"431 Request Header Fields Too Large"
)
PLAIN_HTTP_ANSWER = (
    b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
)
# Go's net/http: tlsRecordHeaderLooksLikeHTTP.
_HTTP_STARTS = (b"GET /", b"HEAD ", b"POST ", b"PUT /", b"OPTIO")
_UPGRADE = re.compile(rb"\r\nupgrade([ \t]*:)", re.IGNORECASE)
_IGNORED_UPGRADE = rb"\r\nX-Ignored-Upgrade\1"

# Linux names; where an ioctl is missing the kernel's queues are taken as empty.
_UNSENT_IOCTL: int | None = getattr(termios, "TIOCOUTQ", None)
_UNREAD_IOCTL: int | None = getattr(termios, "FIONREAD", None)


def _queued(fd: int, request: int | None) -> int:
    if fd < 0 or request is None:
        return 0
    try:
        (count,) = struct.unpack("i", fcntl.ioctl(fd, request, b"\0\0\0\0"))
        return int(count)
    except OSError:
        return 0


def kernel_unsent(fd: int) -> int:
    """Bytes the kernel still holds for the peer (unsent or unacknowledged); 0 if unknown."""
    return _queued(fd, _UNSENT_IOCTL)


def kernel_unread(fd: int) -> int:
    """Bytes the peer sent that the event loop has not read yet; 0 if unknown."""
    return _queued(fd, _UNREAD_IOCTL)


def looks_like_http(first: bytes) -> bool:
    return first[:5] in _HTTP_STARTS


def _undecided(first: bytes) -> bool:
    """Fewer than 5 bytes that could still turn into one of Go's HTTP starts."""
    return len(first) < 5 and any(start.startswith(first) for start in _HTTP_STARTS)


class HTTPProtocol(Protocol):
    """What uvicorn's HTTP protocol offers: asyncio.Protocol's callbacks, and `shutdown()`,
    which uvicorn's Server calls on each connection to close it gracefully."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None: ...
    def data_received(self, data: bytes) -> None: ...
    def eof_received(self) -> bool | None: ...
    def connection_lost(self, exc: Exception | None) -> None: ...
    def pause_writing(self) -> None: ...
    def resume_writing(self) -> None: ...
    def shutdown(self) -> None: ...


@dataclass(eq=False)
class Listening:
    """What every connection of one listener shares."""

    http: Callable[..., HTTPProtocol]  # uvicorn's protocol class (`Config.http_protocol_class`)
    read_header_timeout: float
    tls: ssl.SSLContext | None = None
    tls_handshake_timeout: float = 0.0
    max_header_bytes: int = MAX_HEADER_BYTES
    connections: set[GuardedConnection] = field(default_factory=set)


def connection_class(listening: Listening) -> type[GuardedConnection]:
    """The protocol class to give uvicorn (`uvicorn.Config(http=...)`) for one listener."""

    class Connection(GuardedConnection):
        shared = listening

    return Connection


class GuardedConnection(asyncio.Protocol):
    shared: ClassVar[Listening]

    def __init__(self, **uvicorn_arguments: Any) -> None:
        self.http = self.shared.http(**uvicorn_arguments)
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None  # TCP, then TLS once it is started
        self.outgoing: CoalescingTransport | None = None  # what uvicorn's protocol writes to
        self.fd = -1
        self.opening: asyncio.Task[None] | None = None  # the TLS handshake under way
        self.first: bytearray | None = None
        self.deadline = float("inf")
        self.expiry: asyncio.TimerHandle | None = None
        self.refused = False  # answered Go's 400 (plain HTTP) or 431: what comes is read away
        self.early = bytearray()
        self.started = False  # uvicorn's protocol has the connection
        self.head_since: float | None = None  # a request head is awaited or arriving
        self.head_open = False  # between a request's first byte and the end of its head
        self.head_bytes = 0
        self.in_body = False  # after a head, until its message is complete
        self.quiet_checks = 0  # consecutive drain checks that found nothing left to send
        self.heads: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's do not subclass asyncio's
        sock = transport.get_extra_info("socket")
        self.fd = sock.fileno() if sock is not None else -1
        self.transport = transport
        self.shared.connections.add(self)
        if self.shared.tls is None:
            self._start(transport)
            return
        self.first = bytearray()  # the client's first bytes, until TLS or plain HTTP is told
        limit = self.shared.tls_handshake_timeout
        # 0 or less: no limit of ours (the TLS layer's own 60 s still bounds the handshake).
        self.deadline = self.loop.time() + limit if limit > 0 else float("inf")
        if limit > 0:
            self.expiry = self.loop.call_later(limit, self._opening_expired)

    def data_received(self, data: bytes) -> None:
        if not self.started:
            if self.opening is not None and self.first is None:
                # Decrypted already, in the same read as the end of the handshake, before
                # start_tls returned: uvicorn's protocol gets it once it has the connection.
                self.early += data
            else:
                self._first_bytes(data)
            return
        if self.refused:
            return  # answered 431; the connection is closing
        heads = self.heads
        if heads is not None:
            if not self.in_body:  # a head may be in this chunk: before its blank line
                end = data.find(b"\r\n\r\n")
                end = len(data) if end < 0 else end + 2
                if data.find(b"pgrade", 0, end) >= 0 or data.find(b"PGRADE", 0, end) >= 0:
                    data = _UPGRADE.sub(_IGNORED_UPGRADE, data)
            try:
                heads.feed_data(data)
            except (httptools.HttpParserError, httptools.HttpParserUpgrade):
                # uvicorn's parser fails the same way and answers 400 (or CONNECT): stop here.
                self.heads, self.head_since, self.head_open = None, None, False
            if self.head_open:
                self.head_bytes += len(data)
                if self.head_bytes > self.shared.max_header_bytes:
                    self._refuse_head()
                    return
        self.http.data_received(data)

    def eof_received(self) -> bool | None:
        return self.http.eof_received() if self.started else None

    def connection_lost(self, exc: Exception | None) -> None:
        self.shared.connections.discard(self)
        if self.expiry is not None:
            self.expiry.cancel()
        if self.opening is not None:
            self.opening.cancel()
        if self.started:
            self.http.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.started:
            self.http.pause_writing()

    def resume_writing(self) -> None:
        if self.started:
            self.http.resume_writing()

    # -- the head tracker's parser callbacks ----------------------------------------------

    def on_message_begin(self) -> None:
        self.head_open = True
        self.head_bytes = 0
        if self.head_since is None:
            self.head_since = self.loop.time()

    def on_headers_complete(self) -> None:
        self.head_open = False
        self.head_since = None
        self.in_body = True

    def on_message_complete(self) -> None:
        self.in_body = False

    # -- opening --------------------------------------------------------------------------

    def _start(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.head_since = self.loop.time()
        self.started = True
        self.outgoing = CoalescingTransport(transport)
        self.http.connection_made(self.outgoing)
        if self.early:
            early, self.early = bytes(self.early), bytearray()
            self.data_received(early)

    def _first_bytes(self, data: bytes) -> None:
        """Before TLS: keep the first bytes until they tell TLS from plain HTTP."""
        if self.refused or self.first is None:
            return  # read away, after Go's 400
        self.first += data
        if self.opening is not None or _undecided(bytes(self.first)):
            return
        assert self.transport is not None
        if looks_like_http(bytes(self.first)):
            # Go's answer, then FIN; what the client sends is read away until it closes, so
            # that closing does not reset the connection and discard the answer unread.
            self.refused = True
            self.transport.write(PLAIN_HTTP_ANSWER)
            if self.transport.can_write_eof():
                self.transport.write_eof()
            return
        assert self.shared.tls is not None
        self.opening = self.loop.create_task(self._open(self.transport, self.shared.tls))

    def _opening_expired(self) -> None:
        self.expiry = None
        if not self.started and self.transport is not None:
            log.debug("no TLS handshake completed by --tls-handshake-timeout; closed")
            self.abort()

    async def _open(self, raw: asyncio.Transport, context: ssl.SSLContext) -> None:
        """TLS on the accepted connection (`loop.start_tls`), given the bytes already read."""
        loop = self.loop
        remaining = self.deadline - loop.time()
        handshake = asyncio.ensure_future(
            loop.start_tls(
                raw,
                self,
                context,
                server_side=True,
                ssl_handshake_timeout=max(0.001, remaining) if remaining != float("inf") else None,
            )
        )
        try:
            # start_tls has made its TLS protocol the transport's, reading paused: the bytes
            # read before go in first, through the asyncio.BufferedProtocol interface.
            await asyncio.sleep(0)
            tls_layer = raw.get_protocol()
            if tls_layer is self:
                raise RuntimeError("start_tls did not take the connection over")
            assert self.first is not None
            first, self.first = bytes(self.first), None
            _feed(tls_layer, first)
            tls = await handshake
        except TimeoutError:
            log.debug("TLS handshake not completed in time; closed")
        except (OSError, ssl.SSLError, EOFError) as err:
            log.debug("TLS handshake error: %s", err)
        except RuntimeError as err:  # this event loop's start_tls works otherwise: a bug
            log.error("cannot start TLS on a connection: %s", err)
        else:
            self.opening = None
            if tls is not None:
                if self.expiry is not None:
                    self.expiry.cancel()
                    self.expiry = None
                self._start(tls)
                return
        finally:
            if not handshake.done():
                handshake.cancel()
        self.opening = None
        self.shared.connections.discard(self)
        raw.abort()

    # -- limits ---------------------------------------------------------------------------

    def _refuse_head(self) -> None:
        log.debug("request head over %d bytes: answered 431", self.shared.max_header_bytes)
        self.heads, self.head_since, self.head_open = None, None, False
        self.refused = True
        assert self.transport is not None
        self.transport.write(HEADER_TOO_LARGE)
        self.transport.close()

    def head_overdue(self, now: float) -> bool:
        """Past --read-header-timeout (0 or less: no limit, as in Go). The clock only runs
        while the server reads: a pipelined request waits unread while uvicorn answers the
        ones before it."""
        limit = self.shared.read_header_timeout
        if limit <= 0 or self.head_since is None or self.transport is None:
            return False
        if not self.transport.is_reading():
            self.head_since = now
            return False
        return now - self.head_since > limit

    # -- draining -------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """Not yet through TLS, expecting its first request, reading a head, or holding bytes
        the loop has not read yet: only a connection between two requests may be closed (one
        with an answer in progress is closed by uvicorn after it). A connection accepted before
        the listener closed whose client has not sent its TLS hello yet is a review on its way,
        as Go's Shutdown treats a new connection; the handshake deadline bounds the wait."""
        if not self.started:
            return not self.refused  # after Go's 400 to plain HTTP: nothing more to answer
        return self.head_since is not None or kernel_unread(self.fd) > 0

    def unsent_bytes(self) -> int:
        buffered = self.transport.get_write_buffer_size() if self.transport is not None else 0
        if self.outgoing is not None:
            buffered += self.outgoing.pending_bytes
        return buffered + kernel_unsent(self.fd)

    def close_gracefully(self) -> None:
        """uvicorn's graceful close: now when idle, else after the answer in progress."""
        if self.started:
            self.http.shutdown()
        elif self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.opening is not None:
            self.opening.cancel()
        if self.transport is not None:
            self.transport.abort()


class CoalescingTransport(asyncio.Transport):
    """A transport over another that holds what is written until the end of the current
    turn of the event loop, then writes it at once. uvicorn writes an answer's head and body
    in one turn; over TLS each write is a record, an encryption and a send of its own."""

    def __init__(self, transport: asyncio.Transport) -> None:
        super().__init__()
        self.transport = transport
        self.loop = asyncio.get_running_loop()
        self.pending: list[bytes] = []
        self.pending_bytes = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self.pending:
            self.loop.call_soon(self.flush)
        chunk = bytes(data)  # no copy for bytes; a caller may reuse a bytearray
        self.pending.append(chunk)
        self.pending_bytes += len(chunk)

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        for data in list_of_data:
            self.write(data)

    def flush(self) -> None:
        """Hand what is held to the transport below (at the end of the turn, or now)."""
        if not self.pending:
            return
        pending, self.pending, self.pending_bytes = self.pending, [], 0
        if not self.transport.is_closing():
            self.transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def abort(self) -> None:
        self.pending, self.pending_bytes = [], 0
        self.transport.abort()

    def write_eof(self) -> None:
        self.flush()
        self.transport.write_eof()

    def can_write_eof(self) -> bool:
        return self.transport.can_write_eof()

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self.transport.pause_reading()

    def resume_reading(self) -> None:
        self.transport.resume_reading()

    def is_reading(self) -> bool:
        return self.transport.is_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.transport.get_protocol()

    def get_write_buffer_size(self) -> int:
        return self.transport.get_write_buffer_size() + self.pending_bytes

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self.transport.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.transport.set_write_buffer_limits(high, low)


def _feed(protocol: asyncio.BaseProtocol, data: bytes) -> None:
    """Hand `data` to `protocol` as if its transport had read it."""
    if isinstance(protocol, asyncio.Protocol):
        protocol.data_received(data)
        return
    view = memoryview(data)
    while view:
        buffer = memoryview(cast(asyncio.BufferedProtocol, protocol).get_buffer(len(view)))
        size = min(len(buffer), len(view))
        buffer[:size] = view[:size]
        cast(asyncio.BufferedProtocol, protocol).buffer_updated(size)
        view = view[size:]
