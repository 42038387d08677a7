"""HTTP/1.1 per connection: uvicorn's httptools protocol with what the webhook needs on top.

- Request heads have a deadline (`--read-header-timeout`, as Go's ReadHeaderTimeout): from the
  connection's start for the first request, from the first byte of each later one. Idle
  keep-alive connections between requests keep uvicorn's long keep-alive timeout.
- While draining, every response says `Connection: close` and the connection closes after
  it, so a pooling client (the API server) stops reusing it cleanly, after an answer.
- `Connection: Upgrade` (`Upgrade: h2c`, websocket) is ignored as Go's server ignores it:
  the request is answered over HTTP/1.1 with its body. llhttp stops at an upgrade and skips
  the body, so the head is replayed without the upgrade into a fresh parser.
- `unsent_bytes()` tells whether a finished response is still on its way to the client.
- `/mutate` is answered here, without ASGI, when the listener's policy carries a handler:
  uvicorn's request cycle still tracks the request (keep-alive, pipelining, draining and
  shutdown see it as usual) but no task, scope events or send/receive coroutines run for it.
  At 1,000 reviews/s that machinery cost as much CPU as TLS and the review together
  (bench/stack.py). A review that must wait for a ServiceAccount (the grace period) finishes
  in a task.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import struct
import termios
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.server import ServerState

from webhook.server.app import MutateHandler, Reply

log = logging.getLogger("webhook.server")


@dataclass(slots=True)
class ConnectionPolicy:
    """Shared by every connection of one listener."""

    read_header_timeout: float
    draining: bool = False
    direct: MutateHandler | None = None  # answer /mutate in the protocol (see above)


class _Completed:
    """Stands in for the request cycle while an upgrade request's head is replayed."""

    response_complete = True


_COMPLETED: Any = _Completed()


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


class WebhookProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        policy: ConnectionPolicy,
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, {}, _loop)
        self.policy = policy
        self.head_since: float | None = None  # a request head is awaited or arriving
        self.quiet_checks = 0  # consecutive drain checks that found nothing left to send
        self._fd = -1
        self._replaying = False
        self._held_cycle: Any = None
        self._direct: RequestResponseCycle | None = None  # the /mutate request being read
        self._direct_started = 0.0

    # -- connection -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        self._fd = sock.fileno() if sock is not None else -1
        self.head_since = self.loop.time()

    @property
    def busy(self) -> bool:
        """A request is expected (a new connection), arriving (bytes the loop has not read
        yet), being read or answered, or waiting in the pipeline: only a connection between
        two requests is idle, and only an idle one may be closed."""
        return (
            self.head_since is not None
            or bool(self.pipeline)
            or (self.cycle is not None and not self.cycle.response_complete)
            or kernel_unread(self._fd) > 0
        )

    def unsent_bytes(self) -> int:
        return self.transport.get_write_buffer_size() + kernel_unsent(self._fd)

    # -- parsing ----------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
        except httptools.HttpParserUpgrade as upgrade:
            self._replay_without_upgrade(data[upgrade.args[0] :])

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.head_since is None:
            self.head_since = self.loop.time()

    def on_headers_complete(self) -> None:
        self.head_since = None
        if self.parser.should_upgrade():
            # Remember the cycle; uvicorn's body callbacks see a finished one and do nothing.
            self._held_cycle = self.cycle
            self.cycle = _COMPLETED
            return
        super().on_headers_complete()
        if self.policy.draining:
            self.cycle.keep_alive = False

    def _replay_without_upgrade(self, rest: bytes) -> None:
        if self._replaying or self.cycle is not _COMPLETED:  # CONNECT, or upgrade twice
            self.send_400_response("Unsupported upgrade request.")
            return
        self.cycle = self._held_cycle
        head = [self.parser.get_method(), b" ", self.url, b" HTTP/1.1\r\n"]
        for name, value in self.headers:
            if name == b"upgrade":
                continue
            if name == b"connection":
                tokens = [t.strip() for t in value.split(b",")]
                value = b", ".join(t for t in tokens if t and t.lower() != b"upgrade")
                if not value:
                    continue
            head += [name, b": ", value, b"\r\n"]
        head.append(b"\r\n")
        self.parser = httptools.HttpRequestParser(self)
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
        self._replaying = True
        try:
            self.data_received(b"".join(head) + rest)
        finally:
            self._replaying = False

    # -- timeouts ---------------------------------------------------------------------------

    def head_overdue(self, now: float) -> bool:
        """Past --read-header-timeout (0 or less: no limit, as in Go)."""
        limit = self.policy.read_header_timeout
        return limit > 0 and self.head_since is not None and now - self.head_since > limit

    # -- /mutate without ASGI -----------------------------------------------------------------

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        handler = self.policy.direct
        if handler is None or cycle.scope["path"] != "/mutate":
            super()._start_asgi_task(cycle, app)
            return
        self._direct = cycle
        self._direct_started = time.perf_counter()
        headers = cycle.scope["headers"]
        content_type = declared = None
        for name, value in headers:
            if name == b"content-type" and content_type is None:
                content_type = value
            elif name == b"content-length" and declared is None:
                declared = value
        refused = handler.refuse(content_type, declared)
        if refused is not None:
            self._reply(cycle, refused)
            return
        if cycle.waiting_for_100_continue and not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            cycle.waiting_for_100_continue = False
        if not cycle.more_body:  # a pipelined request, read while another was answered
            self._answer(cycle)

    def on_body(self, body: bytes) -> None:
        cycle = self._direct
        if cycle is None or cycle is not self.cycle:
            super().on_body(body)
            return
        if cycle.response_complete:  # refused already; the parser skips the rest
            return
        cycle.body += body  # no read pause at uvicorn's high-water mark: nobody would resume
        handler = self.policy.direct
        if handler is not None and len(cycle.body) > handler.max_request_bytes:
            self._reply(cycle, handler.too_large())

    def on_message_complete(self) -> None:
        super().on_message_complete()
        cycle = self._direct
        if cycle is not None and cycle is self.cycle and not cycle.response_complete:
            self._answer(cycle)

    def _answer(self, cycle: RequestResponseCycle) -> None:
        handler = self.policy.direct
        assert handler is not None
        body = bytes(cycle.body)
        cycle.body = bytearray()
        reply = handler.review(body)
        if isinstance(reply, Reply):
            self._reply(cycle, reply)
            return
        task = self.loop.create_task(self._reply_later(cycle, reply))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _reply_later(
        self, cycle: RequestResponseCycle, reply: Coroutine[Any, Any, Reply]
    ) -> None:
        self._reply(cycle, await reply)

    def _reply(self, cycle: RequestResponseCycle, reply: Reply) -> None:
        """Write the whole answer at once and finish the cycle as uvicorn's send() would."""
        handler = self.policy.direct
        if self._direct is cycle:
            self._direct = None
        if handler is not None:
            handler.observe(cycle.scope["method"], reply.status, self._direct_started)
        if cycle.disconnected or cycle.response_complete:
            return
        cycle.response_started = True
        cycle.waiting_for_100_continue = False
        head = [STATUS_LINE[reply.status]]
        for name, value in cycle.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: ",
            reply.content_type,
            b"\r\ncontent-length: ",
            str(len(reply.body)).encode(),
            b"\r\n",
        ]
        if not cycle.keep_alive:
            head.append(b"connection: close\r\n")
        head.append(b"\r\n")
        if cycle.scope["method"] != "HEAD":
            head.append(reply.body)
        self.transport.write(b"".join(head))
        cycle.response_complete = True
        cycle.message_event.set()
        if not cycle.keep_alive:
            self.transport.close()
        cycle.on_response()
